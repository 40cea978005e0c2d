"""What `train.compile: true` costs and gains in the trainer: eager and compiled runs of launch/train.py, interleaved.

    python bench/compile_cost.py [--config ngpt_tiny] [--steps 60] [--rounds 2] [--ds ds_configs/zero2.json]

Each round runs the same short training three times, one after the other: eager; compiled with an
empty Inductor cache (`cold`: what the first run on a machine pays); compiled again with the cache
the cold run filled (`warm`: what every later run of the same shape pays). The rounds repeat that
order so all three modes see the machine's load alike. Per run it reads the step times the trainer
logs (metrics.jsonl) and times the whole process:

- step: the median step after the first two (compiled: the compiled graphs' speed);
- first step: includes the compilation of the training graph;
- startup extra: (process wall - steps x median step) minus the eager run's of the same round, so
  compilation of the training and evaluation graphs and everything else that is not a steady step;
- break-even: startup extra / (eager step - compiled step), the steps after which compile has paid.

A train.compile preset default should be on only where the steady step wins and the runs it is used
for are longer than the break-even.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import children  # noqa: E402
from report import json_file  # noqa: E402  (bench/, the script's folder, is on sys.path)

MODES = ("eager", "cold", "warm")


def run_once(args, mode: str, config: dict, data_dir: str, work: Path, cache: Path) -> dict:
    """One training process; returns its step times and wall time."""
    run_dir = work / f"{mode}_{time.monotonic_ns()}"
    run_dir.mkdir(parents=True)
    yaml_path = run_dir / "config.yaml"
    train = {**config.get("train", {}), "compile": mode != "eager", "log_interval": 1}
    train.update(eval_interval=0, checkpoint_interval=0, keep_checkpoints=1)
    yaml_path.write_text(yaml.safe_dump({**config, "train": train}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    cmd = [sys.executable, str(REPO / "launch/train.py"), "--config", str(yaml_path), "--deepspeed_config", args.ds]
    cmd += ["--data", data_dir, "--max-steps", str(args.steps), "--out", str(run_dir / "out"), "--resume", "none"]
    start = time.perf_counter()
    proc = children.run([*cmd, "--no-progress"], env=env)  # stopped with this script
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"{mode} run failed ({proc.returncode}): {' '.join(cmd)}")
    records = [json.loads(line) for line in (run_dir / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["throughput/step_time_s"] for r in records if "throughput/step_time_s" in r]
    return {"mode": mode, "wall_s": wall, "first_step_s": steps[0], "step_s": statistics.median(steps[2:])}


def summarize(rounds: list[dict[str, dict]], steps: int) -> dict:
    """Per mode: medians over rounds (and the range) of step, first step and startup extra; break-even."""
    out = {}
    for mode in MODES:
        had = [r for r in rounds if mode in r]  # cold runs may be in the first rounds only (--cold-rounds)
        step = [r[mode]["step_s"] for r in had]
        ratio = [r[mode]["step_s"] / r["eager"]["step_s"] for r in had]
        extra = [
            (r[mode]["wall_s"] - steps * r[mode]["step_s"]) - (r["eager"]["wall_s"] - steps * r["eager"]["step_s"])
            for r in had
        ]
        saved = statistics.median(r["eager"]["step_s"] - r[mode]["step_s"] for r in had)
        out[mode] = {
            "step_ms": 1e3 * statistics.median(step),
            "step_ratio": statistics.median(ratio),
            "step_ratio_range": [min(ratio), max(ratio)],
            "runs": len(had),
            "first_step_s": statistics.median(r[mode]["first_step_s"] for r in had),
            "wall_s": statistics.median(r[mode]["wall_s"] for r in had),
            "startup_extra_s": statistics.median(extra),
            "startup_extra_range": [min(extra), max(extra)],
            # a compiled run that also starts no slower than eager has paid from its first step: 0
            "break_even_steps": max(0.0, statistics.median(extra)) / saved if mode != "eager" and saved > 0 else None,
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ngpt_tiny", help="preset or YAML (default ngpt_tiny)")
    parser.add_argument("--ds", default=str(REPO / "ds_configs/zero2.json"), help="DeepSpeed JSON")
    parser.add_argument("--steps", type=int, default=60, help="training steps per run")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of eager, cold, warm")
    parser.add_argument(
        "--cold-rounds", type=int, help="rounds that include the cold run (default: all; later ones: eager, warm)"
    )
    parser.add_argument("--data", help="prepared dataset (default: the default corpus)")
    parser.add_argument("--json", type=json_file, help="write the results here too")
    parser.add_argument("--docs", action="store_true", help="also write the results into docs/benchmarks.md")
    parser.add_argument("--from-json", help="no runs: rebuild the table (and --docs) from an earlier --json file")
    args = parser.parse_args(argv)
    if args.steps < 4 or args.rounds < 1 or (args.cold_rounds is not None and not 1 <= args.cold_rounds):
        parser.error("--steps must be >= 4, --rounds >= 1 and --cold-rounds >= 1")
    sys.path.insert(0, str(REPO / "bench"))
    from report import command_line

    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        report(args, saved, summarize(saved["rounds"], saved["steps"]))
        return 0
    from ngpt_ds.data.default_corpus import ensure_default_dataset
    from ngpt_ds.model.config import load_yaml, resolve_config_path

    config = load_yaml(resolve_config_path(args.config))
    data_dir = args.data or str(ensure_default_dataset())
    rounds = []
    with tempfile.TemporaryDirectory(prefix="compile_cost_") as tmp:
        work = Path(tmp)
        for i in range(args.rounds):
            cold = args.cold_rounds is None or i < args.cold_rounds
            warm_cache = work / f"cache_{i}" if cold else work / "cache_0"  # filled by a cold run
            rounds.append({"eager": run_once(args, "eager", config, data_dir, work, work / f"unused_{i}")})
            if cold:
                rounds[-1]["cold"] = run_once(args, "cold", config, data_dir, work, warm_cache)
            rounds[-1]["warm"] = run_once(args, "warm", config, data_dir, work, warm_cache)
            print(f"round {i + 1}: " + ", ".join(f"{m} {json.dumps(r)}" for m, r in rounds[-1].items()), flush=True)
    from report import machine

    saved = {
        "command": command_line(),
        "machine": machine(),  # with the date: --from-json rebuilds the table later, maybe elsewhere
        "config": args.config,
        "deepspeed": os.path.basename(args.ds),
        "steps": args.steps,
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "rounds": rounds,
    }
    result = summarize(rounds, args.steps)
    if args.json:
        Path(args.json).write_text(json.dumps({**saved, "summary": result}, indent=2) + "\n")
    report(args, saved, result)
    return 0


def report(args, saved: dict, result: dict) -> None:
    """Print the table; with --docs also write it into docs/benchmarks.md."""
    header = (
        "| mode | step ms (median) | step vs eager (range) | first step s | startup extra s (range) | "
        "break-even steps | process wall s |"
    )
    rows = [header, "|---|---|---|---|---|---|---|"]
    for mode, r in result.items():
        lo, hi = r["step_ratio_range"]
        elo, ehi = r["startup_extra_range"]
        even = f"{r['break_even_steps']:.0f}" if r["break_even_steps"] is not None else "never"
        rows.append(
            f"| {mode} | {r['step_ms']:.0f} | {r['step_ratio']:.3f} ({lo:.3f}-{hi:.3f}) | {r['first_step_s']:.1f} | "
            + (f"{r['startup_extra_s']:.1f} ({elo:.1f}-{ehi:.1f}) | {even} |" if mode != "eager" else "0 | - |")
            + f" {r['wall_s']:.0f} |"
        )
    table = "\n".join(rows)
    print(table)
    if args.docs:
        from report import command_line, machine, update_section

        rebuilt = f" (table written by `{command_line()}`)" if args.from_json else ""
        # The machine and date of the runs, saved with them: a --from-json rebuild stamped its own (a
        # laptop's CPU and today's date on a table measured elsewhere, weeks before).
        measured_on = saved.get("machine") or (
            "machine/date not recorded (a --json written before they were saved)" if args.from_json else machine()
        )
        update_section(
            "compile",
            f"Command: `{saved['command']}`{rebuilt}  \nMachine: {measured_on}  \n"
            f"Setting: {saved['config']}, {saved['deepspeed']}, {saved['steps']} steps per run, 1 process, "
            f"{saved['threads']} thread(s); medians of {len(saved['rounds'])} rounds of eager, cold, warm "
            f"(cold in {result['cold']['runs']} of them).\n\n{table}",
        )


if __name__ == "__main__":
    sys.exit(main())
