"""Per-step time of nGPT versus GPT at equal shape and batch, measured side by side.

    python bench/step_time.py [--shapes tiny,0.5b-short] [--rounds 10] [--ds ds_configs/zero2.json]

One process builds a DeepSpeed engine for each model of each shape, as the trainer does
(nGPT with its hypersphere hook), and alternates their training steps (forward, backward,
engine.step), so both see the same machine state; the reported ratio is
median(nGPT) / median(GPT). The paper reports nGPT 1.6-1.8x slower per step with
unfused normalizations (PAPER A.4). `--compile` adds torch.compile'd models. On a shared
machine, `--threads 1 --clock cpu` times the steps by this process's CPU time (bench/mfu.py
explains why); the per-round ratios' minimum and maximum show the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ngpt_ds.cli import default_accelerator  # noqa: E402

default_accelerator()

from engines import shape_engine  # noqa: E402
from report import add_timing_arguments, apply_timing_arguments, count, json_file  # noqa: E402

from ngpt_ds import distributed  # noqa: E402
from ngpt_ds.train.builder import init_process_group  # noqa: E402

#: name -> (model shape, micro-batch). "0.5b-short": the paper's 0.5B layer shape (d 1024, 16 heads,
#: 4d MLP, 1k context, 32k vocabulary) at 2 layers so a CPU can run it.
SHAPES = {
    "tiny": (dict(n_layer=4, n_embd=192, n_head=4, seq_len=256, vocab_size=4096), 8),
    "0.5b-short": (dict(n_layer=2, n_embd=1024, n_head=16, seq_len=1024, vocab_size=32000), 2),
    "micro": (dict(n_layer=2, n_embd=32, n_head=2, seq_len=32, vocab_size=256), 2),
}


def make_step(
    arch: str, shape: dict, batch: int, ds_path: str, compiled: bool, clock: Callable[[], float] = time.perf_counter
):
    """A function running one training step of a fresh engine; returns its seconds by `clock`
    (wall time, or time.process_time: CPU time, for one thread; bench/mfu.py explains why)."""
    engine = shape_engine(arch, shape, batch, ds_path).engine
    forward = torch.compile(engine.module) if compiled else engine
    tokens = torch.randint(0, shape["vocab_size"], (batch, shape["seq_len"] + 1)).to(engine.device)

    def step() -> float:
        start = clock()
        _, loss = forward(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        return clock() - start

    return step


def interleaved_step_times(
    shape: dict,
    batch: int,
    ds_path: str,
    rounds: int,
    warmup: int,
    compiled: bool,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds of each timed step, {"ngpt": [...], "gpt": [...]}, from alternating steps of both engines.

    Needs a process group (init_process_group). bench/convergence.py takes its step-time ratio from here.
    """
    steps = {arch: make_step(arch, shape, batch, ds_path, compiled, clock) for arch in ("ngpt", "gpt")}
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {arch: [] for arch in steps}
    archs = list(steps)
    for round_index in range(rounds):
        # A B, B A, A B ...: both see the same machine noise, and neither always runs first in a round (right
        # after the other's step and its freed memory), as in bench/peer_step.py
        start = round_index % len(archs)
        for arch in archs[start:] + archs[:start]:
            times[arch].append(steps[arch]())
    return times


def measure(shape_name: str, rounds: int, warmup: int, ds_path: str, compiled: bool, clock: str = "wall") -> dict:
    shape, batch = SHAPES[shape_name]
    timer = time.process_time if clock == "cpu" else time.perf_counter
    times = interleaved_step_times(shape, batch, ds_path, rounds, warmup, compiled, timer)
    ngpt, gpt = statistics.median(times["ngpt"]), statistics.median(times["gpt"])
    per_round = [n / g for n, g in zip(times["ngpt"], times["gpt"])]
    return {
        "shape": shape_name,
        **shape,
        "batch": batch,
        "deepspeed": os.path.basename(ds_path),
        "compiled": compiled,
        "rounds": rounds,
        "ngpt_ms": 1e3 * ngpt,
        "gpt_ms": 1e3 * gpt,
        "ratio": ngpt / gpt,
        "clock": clock,
        "round_ratio_min": min(per_round),
        "round_ratio_max": max(per_round),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="tiny,0.5b-short", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--rounds", type=count(1), default=10, help="timed A/B rounds per shape")
    parser.add_argument("--warmup", type=count(0), default=2, help="untimed rounds first (and compilation)")
    parser.add_argument(
        "--ds",
        default=str(REPO / "ds_configs/zero2.json"),
        help="DeepSpeed JSON for precision and ZeRO stage (its micro-batch is replaced per shape)",
    )
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    add_timing_arguments(parser)
    parser.add_argument("--json", type=json_file, help="write the results here too")
    parser.add_argument("--docs", action="store_true", help="also write the results into docs/benchmarks.md")
    args = parser.parse_args()
    if not apply_timing_arguments(args):
        return 2
    init_process_group(distributed.discover({}), timeout_s=600)
    results = []
    print(f"{'shape':<12} {'mode':<9} {'nGPT ms':>9} {'GPT ms':>9} {'nGPT/GPT':>9} {'rounds min-max':>15}")
    for name in args.shapes.split(","):
        for compiled in (False, True) if args.compile else (False,):
            r = measure(name, args.rounds, args.warmup, args.ds, compiled, args.clock)
            results.append(r)
            mode = "compiled" if compiled else "eager"
            print(
                f"{name:<12} {mode:<9} {r['ngpt_ms']:>9.1f} {r['gpt_ms']:>9.1f} {r['ratio']:>9.2f} "
                f"{r['round_ratio_min']:>7.2f}-{r['round_ratio_max']:.2f}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"threads": torch.get_num_threads(), "results": results}, indent=2) + "\n"
        )
    if args.docs:
        from report import command_line, machine, update_section

        rows = [
            "| shape | batch x context | mode | nGPT ms/step | GPT ms/step | nGPT / GPT | per round, min-max |",
            "|---|---|---|---|---|---|---|",
        ]
        rows += [
            f"| {r['shape']} (L {r['n_layer']}, d {r['n_embd']}) | {r['batch']} x {r['seq_len']} | "
            f"{'compiled' if r['compiled'] else 'eager'} | {r['ngpt_ms']:.0f} | {r['gpt_ms']:.0f} | "
            f"**{r['ratio']:.2f}** | {r['round_ratio_min']:.2f}-{r['round_ratio_max']:.2f} |"
            for r in results
        ]
        update_section(
            "step_time",
            f"Command: `{command_line()}`  \nMachine: {machine()}, "
            f"{torch.get_num_threads()} threads, {args.clock} clock; medians of {args.rounds} interleaved rounds.\n\n"
            + "\n".join(rows),
        )
    return 0


if __name__ == "__main__":
    from ngpt_ds.distributed import exit_process

    sys.exit(exit_process(main()))  # no interpreter teardown after a process group (see there)
