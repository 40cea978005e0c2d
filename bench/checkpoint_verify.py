"""What verifying a checkpoint's COMPLETE manifest costs on resume, measured and projected to the presets.

    python bench/checkpoint_verify.py [--size-gib 1] [--ranks 8] [--rounds 3] [--cold] [--dir DIR]
                                      [--presets ngpt_0.5b,ngpt_1b] [--world 8,64] [--json F] [--docs]

`--resume` verifies the chosen checkpoint once the process group has started
(ngpt_ds/train/resume.py: resolve_resume_on_all_ranks -> manifest.verify(rank, world)): every rank
checks the listing and sizes, and hashes its share of the files (manifest.digest_share: each file by
one rank, largest first onto the least-loaded rank; blake2b-128, up to 8 threads). DeepSpeed's load
then reads the model states and the rank's own ZeRO optimizer shard. Until this change every rank
hashed every file; the projection shows both. This script builds a synthetic checkpoint folder of `--size-gib`
laid out as a bf16 ZeRO-1/2 save with `--ranks` data-parallel ranks (mp_rank_00_model_states.pt,
one bf16_zero_pp_rank_R_mp_rank_00_optim_states.pt per rank, config.yaml; random bytes: the cost of
blake2b does not depend on content), split 2 : 12 between model states and optimizer shards as
bf16 + ZeRO counts bytes per parameter (ngpt_ds/train/memory_plan.py: bf16 weights, fp32 master +
Adam's two moments). It times:

- the save's extra cost: manifest.build_manifest + write_manifest on the freshly written folder (one
  process hashing every file, as a 1-rank save does; with more ranks each hashes its digest_share);
- manifest.verify() on it, `--rounds` times (median, min-max), with a warm page cache: the files
  were just written, so this is the hashing cost alone. Reading from a cold cache or a shared file
  system adds its read time on top. `--cold` also times rounds after evicting each file from the
  page cache with posix_fadvise(DONTNEED) (Linux, no root needed; file systems that ignore the hint,
  like tmpfs, stay warm: compare the rates);
- one-thread blake2b of the same files, to show what verify's threads gain;
- manifest.verify(rank=r, world=--ranks) for the rank with the largest share: what the slowest rank
  hashes when `--ranks` ranks resume together.

The rounds interleave verify, one-thread blake2b and the cold verify, so all see the same machine
load. Each is timed by wall clock and by this process's CPU time (all threads): on a shared machine
other jobs stretch wall time, while GB per CPU-second is the hashing's cost in cores.

Then, for each preset (parameters counted on torch's `meta` device, vocabulary `--vocab`, default
the paper's 32000) and each world size in `--world`, it reports the checkpoint's size, the bytes
the most bytes any rank hashes (its digest_share), against all of it before and the bytes a rank loads
(model states + its 1/N optimizer shard), and the seconds of the slowest rank's verification at the
measured warm rate. GB = 1e9 bytes, GiB = 2^30.
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

from report import json_file  # noqa: E402

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
    """blake2b-128 of each file in turn, read in 8 MiB chunks as the manifest reads them."""
    out = {}
    for name in names:
        h = hashlib.blake2b(digest_size=16)
        with open(folder / name, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        out[name] = h.hexdigest()
    return out


def timed(fn, *args) -> tuple[float, float, object]:
    """(wall seconds, this process's CPU seconds over all its threads, fn's value)."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, value


def summary(walls: list[float], cpus: list[float], size: int) -> dict:
    """Median and min-max of the rounds; GB/s by wall time, and GB per CPU-second (what the hashing
    costs in cores, which other processes on a shared machine do not stretch)."""
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    return {
        "seconds": walls,
        "cpu_seconds": cpus,
        "median_s": wall,
        "min_s": min(walls),
        "max_s": max(walls),
        "median_cpu_s": cpu,
        "gbps": size / wall / GB,
        "gb_per_cpu_s": size / cpu / GB,
    }


def measure(size_gib: float, ranks: int, rounds: int, cold: bool, parent: str | None) -> dict:
    """Build the checkpoint, seal it, then `rounds` rounds of: verify (warm), one-thread blake2b of the
    same files, and with `cold` verify after evicting the files, interleaved so that all see the same load."""
    with tempfile.TemporaryDirectory(prefix="ckpt-verify-", dir=parent) as tmp:
        folder = Path(tmp) / "step_00000001"
        folder.mkdir()
        files = layout(int(size_gib * GIB), ranks)
        write_s, _, _ = timed(write_files, folder, files)

        def seal() -> dict:
            built = manifest.build_manifest(folder, step=1)
            manifest.write_manifest(folder, built)
            return built

        manifest_s, manifest_cpu_s, built = timed(seal)
        names = sorted(built["files"])
        hashed = sum(entry["size"] for entry in built["files"].values())
        expected = {name: built["files"][name]["blake2b"] for name in names}
        sizes = {name: entry["size"] for name, entry in built["files"].items()}
        share_sizes = [sum(sizes[n] for n in manifest.digest_share(sizes, rank, ranks)) for rank in range(ranks)]
        largest = max(range(ranks), key=lambda rank: share_sizes[rank])
        times = {mode: ([], []) for mode in ("verify_warm", "one_thread", "verify_cold", "verify_share")}

        def record(mode: str, wall: float, cpu: float) -> None:
            times[mode][0].append(wall)
            times[mode][1].append(cpu)

        for _ in range(rounds):
            wall, cpu, problem = timed(manifest.verify, folder)
            if problem is not None:
                raise RuntimeError(problem)
            record("verify_warm", wall, cpu)
            wall, cpu, digests = timed(one_thread_digests, folder, names)
            if digests != expected:
                raise RuntimeError("one-thread digests differ from the manifest's")
            record("one_thread", wall, cpu)
            wall, cpu, problem = timed(lambda: manifest.verify(folder, rank=largest, world=ranks))
            if problem is not None:
                raise RuntimeError(problem)
            record("verify_share", wall, cpu)
            if cold:
                evict(folder, names)
                wall, cpu, problem = timed(manifest.verify, folder)
                if problem is not None:
                    raise RuntimeError(problem)
                record("verify_cold", wall, cpu)
        result = {
            "files": {name: built["files"][name]["size"] for name in names},
            "bytes_hashed": hashed,
            "verify_threads": max(1, min(8, len(names))),
            "write_s": write_s,
            "manifest": summary([manifest_s], [manifest_cpu_s], hashed),
        }
        for mode, (walls, cpus) in times.items():
            if walls:
                result[mode] = summary(walls, cpus, share_sizes[largest] if mode == "verify_share" else hashed)
        result["largest_share"] = {"rank": largest, "bytes": share_sizes[largest], "ranks": ranks}
        return result


def preset_parameters(preset: str, vocab: int) -> int:
    """Parameters of a preset, counted on the `meta` device (no storage allocated)."""
    import torch

    from ngpt_ds.model import build_model, count_parameters, load_model_config

    with torch.device("meta"):
        model = build_model(load_model_config(preset, {"vocab_size": vocab}))
    return count_parameters(model).total


def project(preset: str, parameters: int, worlds: list[int], gbps: float, gb_per_cpu_s: float) -> dict:
    """Per world size: the most bytes one rank hashes (its manifest.digest_share of the checkpoint's files),
    against the whole checkpoint that every rank hashed before, and the bytes a rank loads; seconds for the
    slowest rank at the measured rate `gbps`, and CPU-seconds over all ranks at `gb_per_cpu_s`."""
    model_states = MODEL_STATES_BYTES * parameters
    optimizer = OPTIMIZER_BYTES * parameters
    checkpoint = model_states + optimizer
    rows = []
    for world in worlds:
        files = layout(checkpoint, world)
        most = max(sum(files[n] for n in manifest.digest_share(files, r, world)) for r in range(world))
        loaded = model_states + optimizer // world
        rows.append(
            {
                "world": world,
                "hashed_most_per_rank": most,
                "hashed_per_rank_before": checkpoint,
                "loaded_per_rank": loaded,
                "hashed_all_ranks": checkpoint,
                "hashed_all_ranks_before": checkpoint * world,
                "verify_s_slowest_rank": most / GB / gbps,
                "verify_s_per_rank_before": checkpoint / GB / gbps,
                "cpu_s_all_ranks": checkpoint / GB / gb_per_cpu_s,
                "cpu_s_all_ranks_before": world * checkpoint / GB / gb_per_cpu_s,
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


def timing_row(what: str, t: dict) -> str:
    rounds = len(t["seconds"])
    span = f" ({t['min_s']:.2f}-{t['max_s']:.2f})" if rounds > 1 else ""
    return (
        f"| {what} | {rounds} | {t['median_s']:.2f}{span} | **{t['gbps']:.2f}** | {t['median_cpu_s']:.2f} | "
        f"{t['gb_per_cpu_s']:.2f} |"
    )


def docs_section(args: argparse.Namespace, r: dict, load: tuple[float, float]) -> str:
    from report import command_line, machine

    warm = r["verify_warm"]
    size = r["bytes_hashed"]
    lines = [
        f"Command: `{command_line()}`  \nMachine: {machine()}; load average {load[0]:.2f} before, {load[1]:.2f} "
        f"after (other jobs shared the {os.cpu_count()} cores)",
        "",
        f"A synthetic bf16 ZeRO-1/2 checkpoint of {size / GIB:.2f} GiB ({len(r['files'])} files: model states, "
        f"{args.ranks} optimizer shards, config.yaml) of random bytes, freshly written. Rounds interleave the "
        "modes so that all see the same machine load. Wall time is stretched by the other jobs; CPU time "
        "(this process, all threads) is what the hashing costs in cores.",
        "",
        "| what | rounds | wall s, median (min-max) | GB/s (wall) | CPU s | GB per CPU-second |",
        "|---|---|---|---|---|---|",
        timing_row("save: build + write the manifest (one process, all files)", r["manifest"]),
        timing_row(f"resume: `manifest.verify()`, {r['verify_threads']} threads, warm page cache", warm),
        timing_row("blake2b, one thread, same files, warm page cache", r["one_thread"]),
    ]
    if "verify_cold" in r:
        lines.append(
            timing_row("resume: `manifest.verify()` after posix_fadvise(DONTNEED) of each file", r["verify_cold"])
        )
    share = r["largest_share"]
    lines += [
        timing_row(
            f"resume at {share['ranks']} ranks: the largest share, `manifest.verify(rank={share['rank']}, "
            f"world={share['ranks']})` ({share['bytes'] / GIB:.2f} GiB)",
            r["verify_share"],
        ),
        "",
        f"At the presets (vocabulary {args.vocab}; bf16 + ZeRO-2: {MODEL_STATES_BYTES} bytes per parameter of "
        f"model states, {OPTIMIZER_BYTES} of optimizer state cut into N shards; pickling overhead not counted). "
        "Each file is hashed by one rank, largest first onto the rank with the fewest bytes so far. Before, "
        "every rank hashed the whole checkpoint. DeepSpeed's load reads the model states and the rank's own "
        f"shard. Seconds at the warm wall rate above ({warm['gbps']:.2f} GB/s); CPU-seconds at "
        f"{warm['gb_per_cpu_s']:.2f} GB per CPU-second:",
        "",
        "| preset | parameters | checkpoint | N ranks | most one rank hashes (before) | each rank loads | "
        "all ranks hash (before) | slowest rank's verify (before) | CPU-seconds, all ranks (before) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in r["presets"]:
        for w in p["worlds"]:
            lines.append(
                f"| {p['preset']} | {p['parameters'] / 1e6:.0f}M | {p['checkpoint_bytes'] / GB:.1f} GB | {w['world']} | "
                f"{w['hashed_most_per_rank'] / GB:.2f} GB ({w['hashed_per_rank_before'] / GB:.1f} GB) | "
                f"{w['loaded_per_rank'] / GB:.2f} GB | {w['hashed_all_ranks'] / GB:.1f} GB "
                f"({w['hashed_all_ranks_before'] / GB:.0f} GB) | {w['verify_s_slowest_rank']:.1f} s "
                f"({w['verify_s_per_rank_before']:.0f} s) | {w['cpu_s_all_ranks']:.0f} ({w['cpu_s_all_ranks_before']:.0f}) |"
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
    parser.add_argument("--json", type=json_file, help="write the results here too")
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
    warm = r["verify_warm"]
    r["presets"] = [project(name, n, args.world, warm["gbps"], warm["gb_per_cpu_s"]) for name, n in parameters.items()]
    r["load_average"] = [load_before, load_after]
    r["settings"] = {"size_gib": args.size_gib, "ranks": args.ranks, "rounds": args.rounds, "vocab": args.vocab}

    print(
        f"checkpoint {r['bytes_hashed'] / GIB:.2f} GiB in {len(r['files'])} files; load average "
        f"{load_before:.2f} -> {load_after:.2f}"
    )
    for key, what in (
        ("manifest", "save: manifest"),
        ("verify_warm", f"verify, warm, {r['verify_threads']} threads"),
        ("one_thread", "blake2b, one thread"),
        ("verify_cold", "verify after DONTNEED"),
        ("verify_share", f"verify of the largest share at {r['largest_share']['ranks']} ranks"),
    ):
        if key in r:
            t = r[key]
            print(
                f"{what}: median {t['median_s']:.2f} s (min-max {t['min_s']:.2f}-{t['max_s']:.2f}), "
                f"{t['gbps']:.2f} GB/s; {t['median_cpu_s']:.2f} CPU s, {t['gb_per_cpu_s']:.2f} GB per CPU-second"
            )
    for p in r["presets"]:
        for w in p["worlds"]:
            print(
                f"{p['preset']} ({p['parameters'] / 1e6:.0f}M params, {p['checkpoint_bytes'] / GB:.1f} GB) at "
                f"{w['world']} ranks: one rank hashes at most {w['hashed_most_per_rank'] / GB:.2f} GB (every rank "
                f"{w['hashed_per_rank_before'] / GB:.1f} GB before), loads {w['loaded_per_rank'] / GB:.2f} GB; all "
                f"ranks hash {w['hashed_all_ranks'] / GB:.1f} GB ({w['hashed_all_ranks_before'] / GB:.1f} GB before); "
                f"slowest rank {w['verify_s_slowest_rank']:.1f} s ({w['verify_s_per_rank_before']:.1f} s before), "
                f"{w['cpu_s_all_ranks']:.0f} CPU-seconds in all ({w['cpu_s_all_ranks_before']:.0f} before)"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    if args.docs:
        from report import update_section

        update_section("checkpoint_verify", docs_section(args, r, (load_before, load_after)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
