"""What verifying a checkpoint's COMPLETE manifest costs on resume, measured and projected to the presets.

    python bench/checkpoint_verify.py [--size-gib 1] [--ranks 8] [--rounds 3] [--cold] [--dir DIR]
                                      [--presets ngpt_0.5b,ngpt_1b] [--world 8,64] [--json F] [--docs]

`--resume` verifies the chosen checkpoint on every rank before the process group exists
(ngpt_ds/train/checkpoint.py: resolve_resume -> manifest.verify): each rank hashes every file
(blake2b-128, up to 8 threads), while DeepSpeed's load then reads only the model states and the
rank's own ZeRO optimizer shard. This script builds a synthetic checkpoint folder of `--size-gib`
laid out as a bf16 ZeRO-1/2 save with `--ranks` data-parallel ranks (mp_rank_00_model_states.pt,
one bf16_zero_pp_rank_R_mp_rank_00_optim_states.pt per rank, config.yaml; random bytes: the cost of
blake2b does not depend on content), split 2 : 12 between model states and optimizer shards as
bf16 + ZeRO counts bytes per parameter (ngpt_ds/train/memory_plan.py: bf16 weights, fp32 master +
Adam's two moments). It times:

- the save's extra cost: manifest.build_manifest + write_manifest on the freshly written folder;
- manifest.verify() on it, `--rounds` times (median, min-max), with a warm page cache: the files
  were just written, so this is the hashing cost alone. Reading from a cold cache or a shared file
  system adds its read time on top. `--cold` also times rounds after evicting each file from the
  page cache with posix_fadvise(DONTNEED) (Linux, no root needed; file systems that ignore the hint,
  like tmpfs, stay warm: compare the rates);
- one-thread blake2b of the same files (hashlib.file_digest), to show what verify's threads gain.

Then, for each preset (parameters counted on torch's `meta` device, vocabulary `--vocab`, default
the paper's 32000) and each world size in `--world`, it reports the checkpoint's size, the bytes
every rank hashes (all of it) against the bytes a rank loads (model states + its 1/N optimizer
shard), and the seconds of verification at the measured warm rate. GB = 1e9 bytes, GiB = 2^30.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ngpt_ds.train import manifest  # noqa: E402

#: Bytes per parameter of a bf16 ZeRO-1/2 checkpoint (as ngpt_ds/train/memory_plan.py counts them):
#: the module's bf16 weights in the model-states file; the fp32 master and Adam's exp_avg, exp_avg_sq,
#: cut into one shard per data-parallel rank. Gradients are not saved.
MODEL_STATES_BYTES = 2
OPTIMIZER_BYTES = 4 + 8
MODEL_STATES = "mp_rank_00_model_states.pt"
CHUNK = 8 << 20
GB = 1e9
GIB = 2**30


def shard_name(rank: int) -> str:
    return f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"


def layout(total: int, ranks: int) -> dict[str, int]:
    """File name -> size of a bf16 ZeRO-1/2 checkpoint of about `total` bytes saved by `ranks` ranks."""
    shard = total * OPTIMIZER_BYTES // (MODEL_STATES_BYTES + OPTIMIZER_BYTES) // ranks
    files = {MODEL_STATES: total - shard * ranks}
    files.update({shard_name(rank): shard for rank in range(ranks)})
    files["config.yaml"] = 2048
    return files


def write_files(folder: Path, files: dict[str, int]) -> None:
    """Random bytes (one 8 MiB block, repeated), fsynced as a save would leave them on disk."""
    block = os.urandom(CHUNK)
    for name, size in files.items():
        with open(folder / name, "wb") as f:
            left = size
            while left:
                n = min(left, CHUNK)
                f.write(block[:n])
                left -= n
            f.flush()
            os.fsync(f.fileno())


def evict(folder: Path, names: list[str]) -> None:
    """Ask the kernel to drop these files' pages from the page cache (a hint; some file systems ignore it)."""
    for name in names:
        fd = os.open(folder / name, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def one_thread_digests(folder: Path, names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        with open(folder / name, "rb") as f:
            out[name] = hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
    return out


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def spread(seconds: list[float]) -> dict:
    return {"seconds": seconds, "median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds)}


def measure(size_gib: float, ranks: int, rounds: int, cold: bool, parent: str | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="ckpt-verify-", dir=parent) as tmp:
        folder = Path(tmp) / "step_00000001"
        folder.mkdir()
        files = layout(int(size_gib * GIB), ranks)
        write_s, _ = timed(write_files, folder, files)

        def seal() -> dict:
            built = manifest.build_manifest(folder, step=1)
            manifest.write_manifest(folder, built)
            return built

        manifest_s, built = timed(seal)
        names = sorted(built["files"])
        hashed = sum(entry["size"] for entry in built["files"].values())
        warm = []
        for _ in range(rounds):
            seconds, problem = timed(manifest.verify, folder)
            if problem is not None:
                raise RuntimeError(problem)
            warm.append(seconds)
        single_s, digests = timed(one_thread_digests, folder, names)
        if digests != {name: built["files"][name]["blake2b"] for name in names}:
            raise RuntimeError("one-thread digests differ from the manifest's")
        result = {
            "files": {name: built["files"][name]["size"] for name in names},
            "bytes_hashed": hashed,
            "verify_threads": max(1, min(8, len(names))),
            "write_s": write_s,
            "manifest_s": manifest_s,
            "manifest_gbps": hashed / manifest_s / GB,
            "verify_warm": {**spread(warm), "gbps": hashed / statistics.median(warm) / GB},
            "one_thread_s": single_s,
            "one_thread_gbps": hashed / single_s / GB,
        }
        if cold:
            seconds = []
            for _ in range(rounds):
                evict(folder, names)
                s, problem = timed(manifest.verify, folder)
                if problem is not None:
                    raise RuntimeError(problem)
                seconds.append(s)
            result["verify_cold"] = {**spread(seconds), "gbps": hashed / statistics.median(seconds) / GB}
        return result


def preset_parameters(preset: str, vocab: int) -> int:
    """Parameters of a preset, counted on the `meta` device (no storage allocated)."""
    import torch

    from ngpt_ds.model import build_model, count_parameters, load_model_config

    with torch.device("meta"):
        model = build_model(load_model_config(preset, {"vocab_size": vocab}))
    return count_parameters(model).total


def project(preset: str, parameters: int, worlds: list[int], gbps: float) -> dict:
    """Bytes each rank hashes against the bytes it loads, and the seconds at `gbps`, per world size."""
    model_states = MODEL_STATES_BYTES * parameters
    optimizer = OPTIMIZER_BYTES * parameters
    checkpoint = model_states + optimizer
    rows = []
    for world in worlds:
        loaded = model_states + optimizer // world
        rows.append(
            {
                "world": world,
                "hashed_per_rank": checkpoint,
                "loaded_per_rank": loaded,
                "hashed_over_loaded": checkpoint / loaded,
                "hashed_all_ranks": checkpoint * world,
                "verify_s_per_rank": checkpoint / GB / gbps,
            }
        )
    return {
        "preset": preset,
        "parameters": parameters,
        "checkpoint_bytes": checkpoint,
        "model_states_bytes": model_states,
        "optimizer_bytes": optimizer,
        "worlds": rows,
    }


def positive_ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def docs_section(args: argparse.Namespace, r: dict, load: tuple[float, float]) -> str:
    from report import command_line, machine

    warm = r["verify_warm"]
    size = r["bytes_hashed"]
    lines = [
        f"Command: `{command_line()}`  \nMachine: {machine()}; load average {load[0]:.2f} before, {load[1]:.2f} "
        f"after (other jobs shared the {os.cpu_count()} cores)",
        "",
        f"A synthetic bf16 ZeRO-1/2 checkpoint of {size / GIB:.2f} GiB ({len(r['files'])} files: model states, "
        f"{args.ranks} optimizer shards, config.yaml), random bytes, freshly written, so the page cache is warm: "
        "these are hashing costs; a cold read from a local disk or a shared file system adds its read time.",
        "",
        "| what | seconds | GB/s |",
        "|---|---|---|",
        f"| save: build + write the manifest (once, rank 0) | {r['manifest_s']:.2f} | {r['manifest_gbps']:.2f} |",
        f"| resume: `manifest.verify()`, {r['verify_threads']} threads, warm, median of {args.rounds} "
        f"(min-max) | {warm['median_s']:.2f} ({warm['min_s']:.2f}-{warm['max_s']:.2f}) | **{warm['gbps']:.2f}** |",
        f"| blake2b, one thread, same files, warm | {r['one_thread_s']:.2f} | {r['one_thread_gbps']:.2f} |",
    ]
    if "verify_cold" in r:
        cold = r["verify_cold"]
        lines.append(
            f"| resume: `manifest.verify()` after posix_fadvise(DONTNEED) of each file, median (min-max) | "
            f"{cold['median_s']:.2f} ({cold['min_s']:.2f}-{cold['max_s']:.2f}) | {cold['gbps']:.2f} |"
        )
    lines += [
        "",
        f"At the presets (vocabulary {args.vocab}; bf16 + ZeRO-2: {MODEL_STATES_BYTES} bytes per parameter of "
        f"model states, {OPTIMIZER_BYTES} of optimizer state cut into N shards; pickling overhead not counted). "
        "Every rank hashes the whole checkpoint; DeepSpeed's load reads the model states and the rank's own "
        f"shard. Seconds at the warm rate measured above ({warm['gbps']:.2f} GB/s per process):",
        "",
        "| preset | parameters | checkpoint | N ranks | each rank hashes | each rank loads | hashed / loaded | "
        "all ranks hash | verify per rank |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in r["presets"]:
        for w in p["worlds"]:
            lines.append(
                f"| {p['preset']} | {p['parameters'] / 1e6:.0f}M | {p['checkpoint_bytes'] / GB:.1f} GB | {w['world']} | "
                f"{w['hashed_per_rank'] / GB:.1f} GB | {w['loaded_per_rank'] / GB:.2f} GB | "
                f"{w['hashed_over_loaded']:.1f}x | {w['hashed_all_ranks'] / GB:.0f} GB | "
                f"{w['verify_s_per_rank']:.0f} s |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=1.0, help="synthetic checkpoint size in GiB (default 1)")
    parser.add_argument("--ranks", type=int, default=8, help="optimizer shards in it, one per rank (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="timed verify rounds (default 3)")
    parser.add_argument("--cold", action="store_true", help="also time rounds after posix_fadvise(DONTNEED)")
    parser.add_argument("--dir", help="where to build the temporary checkpoint (default: the system's temp dir)")
    parser.add_argument("--presets", default="ngpt_0.5b,ngpt_1b", help="comma list of presets to project to")
    parser.add_argument("--world", type=positive_ints, default=[8, 64], help="comma list of rank counts (8,64)")
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary of the presets (default 32000)")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--docs", action="store_true", help="also write the results into docs/benchmarks.md")
    args = parser.parse_args()
    if args.size_gib <= 0 or args.ranks < 1 or args.rounds < 1:
        print("error: --size-gib must be > 0, --ranks and --rounds >= 1", file=sys.stderr)
        return 2
    if args.dir and not Path(args.dir).is_dir():
        print(f"error: --dir {args.dir} is not a directory", file=sys.stderr)
        return 2

    from ngpt_ds.errors import NgptConfigError

    try:  # before the measurement: a misspelt preset fails at once
        parameters = {name: preset_parameters(name, args.vocab) for name in args.presets.split(",")}
    except NgptConfigError as err:
        print(f"error: --presets: {err}", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    r = measure(args.size_gib, args.ranks, args.rounds, args.cold, args.dir)
    load_after = os.getloadavg()[0]
    gbps = r["verify_warm"]["gbps"]
    r["presets"] = [project(name, n, args.world, gbps) for name, n in parameters.items()]
    r["load_average"] = [load_before, load_after]
    r["settings"] = {"size_gib": args.size_gib, "ranks": args.ranks, "rounds": args.rounds, "vocab": args.vocab}

    warm = r["verify_warm"]
    print(
        f"checkpoint {r['bytes_hashed'] / GIB:.2f} GiB in {len(r['files'])} files; load average "
        f"{load_before:.2f} -> {load_after:.2f}"
    )
    print(f"save: manifest {r['manifest_s']:.2f} s ({r['manifest_gbps']:.2f} GB/s)")
    print(
        f"verify (warm, {r['verify_threads']} threads): median {warm['median_s']:.2f} s "
        f"(min-max {warm['min_s']:.2f}-{warm['max_s']:.2f}), {warm['gbps']:.2f} GB/s"
    )
    print(f"blake2b one thread: {r['one_thread_s']:.2f} s, {r['one_thread_gbps']:.2f} GB/s")
    if "verify_cold" in r:
        cold = r["verify_cold"]
        print(f"verify (after DONTNEED): median {cold['median_s']:.2f} s, {cold['gbps']:.2f} GB/s")
    for p in r["presets"]:
        for w in p["worlds"]:
            print(
                f"{p['preset']} ({p['parameters'] / 1e6:.0f}M params, {p['checkpoint_bytes'] / GB:.1f} GB) at "
                f"{w['world']} ranks: each rank hashes {w['hashed_per_rank'] / GB:.1f} GB, loads "
                f"{w['loaded_per_rank'] / GB:.2f} GB ({w['hashed_over_loaded']:.1f}x); all ranks hash "
                f"{w['hashed_all_ranks'] / GB:.0f} GB; verify {w['verify_s_per_rank']:.0f} s per rank"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    if args.docs:
        from report import update_section

        update_section("checkpoint_verify", docs_section(args, r, (load_before, load_after)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
