"""Step time and peak memory of each parallel mode against the plain 1-rank run, through the real trainer.

    python bench/parallel_modes.py [--modes plain,pp2,sp2] [--steps 12] [--data DIR] [--json FILE] [--docs]

Every mode trains the same tiny nGPT on the same global batch (8 sequences per step: 2 per micro-batch
x 4 micro-batches, one data-parallel replica: the 2 ranks of sp2 share each sequence) with `launch/train.py` under torchrun, one thread per
rank. Per mode it reports the median `throughput/step_time_s` of metrics.jsonl after the first two
steps, and the peak RSS of the largest process (a rank; read back with getrusage once the job ends,
each mode measured in its own child process). Without --data it prepares a small dataset from
CPython's pydoc topics (no download).

A mode is one entry of MODES: ranks, train-section overrides, the DeepSpeed JSON's ZeRO stage.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import children  # noqa: E402
from report import json_file  # noqa: E402

MODEL = {"arch": "ngpt", "n_layer": 4, "n_embd": 64, "n_head": 4, "seq_len": 128}
MICRO, ACCUM = 2, 4


@dataclass(frozen=True)
class Mode:
    ranks: int
    train: dict = field(default_factory=dict)
    zero_stage: int = 1
    describe: str = ""


MODES = {
    "plain": Mode(1, describe="1 rank, no model parallelism"),
    "pp2": Mode(2, {"pipeline_parallel_size": 2}, describe="2 pipeline stages (train.pipeline_parallel_size: 2)"),
    "sp2": Mode(
        2,
        {"sequence_parallel_size": 2},
        describe=f"2 ranks share each sequence, {MODEL['seq_len'] // 2} positions each (train.sequence_parallel_size: 2)",
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per mode (>= 3)")
    p.add_argument("--data", help="a prepared dataset (default: one made from pydoc topics)")
    p.add_argument("--json", type=json_file, help="also write the results to this file")
    p.add_argument("--docs", action="store_true", help="also write the result into docs/benchmarks.md")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: run one mode, print its JSON
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = [m for m in args.modes.split(",") if m not in MODES]
    if unknown or args.steps < 3:
        p.error(f"unknown mode(s) {unknown}" if unknown else "--steps must be at least 3")
    return args


def tiny_dataset(root: Path) -> Path:
    import pydoc_data.topics

    from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset

    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in pydoc_data.topics.topics.values()))
    config = PrepareConfig(
        inputs=(str(corpus),), out=root / "data", vocab_size=512, val_fraction=0.1, workers=1, progress=False
    )
    return prepare_dataset(config)


def measure(name: str, steps: int, data: str, work: Path) -> dict:
    """Run one mode (in this process's children) and read its step time and peak RSS."""
    mode, out = MODES[name], work / name
    train = {"max_steps": steps, "log_interval": 1, "eval_interval": 0, "checkpoint_interval": 0, **mode.train}
    config = work / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"model": MODEL, "train": train}))
    ds = work / f"{name}.json"
    ds.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": MICRO,
                "gradient_accumulation_steps": ACCUM,
                "gradient_clipping": 1.0,
                "bf16": {"enabled": False},
                "zero_optimization": {"stage": mode.zero_stage},
            }
        )
    )
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(mode.ranks)]
    # --standalone: torchrun's agent listens on a port of the kernel's choosing and hands it to the ranks. A port
    # probed here and closed could be taken by any other process's connection before the agent listened on it.
    cmd += ["--standalone", str(REPO / "launch/train.py")]
    cmd += ["--config", str(config), "--deepspeed_config", str(ds), "--data", data, "--out", str(out)]
    proc = children.run(cmd + ["--no-progress", "--resume", "none"], env=env)  # stopped with this script
    if proc.returncode != 0:
        raise SystemExit(f"error: mode {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["throughput/step_time_s"] for r in records if "throughput/step_time_s" in r][2:]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest descendant: a rank
    return {
        "mode": name,
        "ranks": mode.ranks,
        "step_s": statistics.median(times),
        "peak_rss_mib": peak_kib / 1024,
        "losses": losses,
    }


def loss_difference(result: dict, base: dict) -> float:
    """The largest |loss - plain's loss| over the steps both logged (every step: log_interval 1)."""
    if len(result["losses"]) != len(base["losses"]):
        raise SystemExit(f"error: {result['mode']} logged {len(result['losses'])} losses, plain {len(base['losses'])}")
    return max((abs(a - b) for a, b in zip(result["losses"], base["losses"])), default=0.0)


def table(results: list[dict]) -> str:
    base = next((r for r in results if r["mode"] == "plain"), results[0])
    lines = [
        "| mode | ranks | step (s) | step vs plain | peak RSS per rank (MiB) | RSS vs plain | final loss | "
        f"largest loss difference from {base['mode']} (every step) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']}: {MODES[r['mode']].describe} | {r['ranks']} | {r['step_s']:.4f} | "
            f"{r['step_s'] / base['step_s']:.2f}x | {r['peak_rss_mib']:.0f} | "
            f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f}x | {r['losses'][-1]:.6f} | "
            f"{loss_difference(r, base):.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.steps, args.data, Path(args.work))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = args.data or str(tiny_dataset(work))
        results = []
        for name in args.modes.split(","):
            child = [sys.executable, __file__, "--measure", name, "--steps", str(args.steps)]
            proc = children.run(child + ["--data", data, "--work", tmp])  # stopped with this script
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        # the model takes the dataset's vocabulary (MODEL names none): --data's, or 512 of the pydoc set
        vocab = json.loads((Path(data) / "meta.json").read_text())["vocab_size"]
    text = table(results)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.docs:
        from report import command_line, machine, update_section

        setting = (
            f"nGPT {MODEL['n_layer']} layers, d {MODEL['n_embd']}, {MODEL['n_head']} heads, context "
            f"{MODEL['seq_len']}, vocab {vocab}, fp32, ZeRO 1, global batch {MICRO} x {ACCUM} sequences, "
            f"{args.steps} steps (median step time after the first two)"
        )
        update_section(
            "parallel_modes",
            f"Command: `{command_line()}`  \nMachine: {machine()}  \nSetting: {setting}.\n\n{text}",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
