"""What the hypersphere hook costs inside a real ZeRO-2 step on 2 ranks.

    python bench/renorm_cost.py [--config ngpt_tiny] [--steps 30] [--ds ds_configs/zero2.json]

Re-launches itself under torchrun with 2 ranks (gloo on CPU, NCCL on GPUs). Every optimizer
step is timed whole (the forward and backward of each micro-batch of a gradient accumulation,
engine.step) and the hook is timed inside it, summed over its calls in that step (ZeRO steps
each parameter group apart: two calls), so the two numbers come from the same steps and the
ratio is immune to machine noise between runs.
Extra memory: the hook's per-step buffer (one fp32 per norm vector) next to the rank's fp32
master partition. Goal: hook < 3% of the step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from report import count, json_file  # noqa: E402  (bench/, the script's folder, is on sys.path)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ngpt_tiny", help="nGPT preset or YAML (default ngpt_tiny)")
    parser.add_argument("--ds", default=str(REPO / "ds_configs/zero2.json"), help="DeepSpeed JSON (default zero2)")
    parser.add_argument("--steps", type=count(1), default=30, help="timed optimizer steps after 3 warm-up steps")
    parser.add_argument("--ranks", type=count(1), default=2, help="ranks (default 2)")
    parser.add_argument("--json", type=json_file, help="also write the result as JSON here")
    parser.add_argument("--docs", action="store_true", help="also write the result into docs/benchmarks.md")
    return parser.parse_args()


def relaunch(args) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.ranks), __file__, *sys.argv[1:]]
    env = {**os.environ, "NGPT_BENCH_CHILD": "1"}
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.ranks))
    return subprocess.call(cmd, env=env)


WARMUP = 3
"""optimizer steps run first and not timed"""


def measure(engine, hook, batch, steps: int, warmup: int, sync) -> tuple[list[float], list[float], list[int]]:
    """Run `warmup` + `steps` optimizer steps; for each timed one: its seconds (every micro-batch of the
    gradient accumulation, their forward and backward, and engine.step), the hook's seconds within it and
    the hook's calls within it.

    The hook sits on DeepSpeed's basic optimizer, which ZeRO 1/2 steps once per parameter group (the
    trainer's decay and no-decay groups: twice per engine.step), and only at a gradient-accumulation
    boundary: its time is summed per optimizer step. It was averaged per call (half the cost with two
    groups), its warm-up skipped by calls (1.5 steps), and with accumulation the step times were per
    micro-batch while the hook ran once in four of them."""
    inner = hook._after_inner_step
    current = {"seconds": 0.0, "calls": 0}

    def timed(*a, **k):
        start = time.perf_counter()
        inner(*a, **k)
        sync()
        current["seconds"] += time.perf_counter() - start
        current["calls"] += 1

    hook._handle.remove()
    hook._handle = engine.basic_optimizer.register_step_post_hook(timed)
    accum = engine.gradient_accumulation_steps()
    step_seconds, hook_seconds, hook_calls = [], [], []
    for step in range(warmup + steps):
        micro_batches = [batch() for _ in range(accum)]
        current.update(seconds=0.0, calls=0)
        start = time.perf_counter()
        for tokens in micro_batches:
            _, loss = engine(tokens[:, :-1], tokens[:, 1:])
            engine.backward(loss)
            engine.step()
        sync()
        elapsed = time.perf_counter() - start
        if not current["calls"]:
            raise SystemExit(
                f"error: the hypersphere hook did not run in optimizer step {step} ({accum} micro-batches): "
                "nothing to time"
            )
        if step >= warmup:
            step_seconds.append(elapsed)
            hook_seconds.append(current["seconds"])
            hook_calls.append(current["calls"])
    return step_seconds, hook_seconds, hook_calls


def main() -> int:
    args = parse_args()
    if "RANK" not in os.environ:
        return relaunch(args)
    import torch
    import torch.distributed as dist
    from engines import preset_engine

    from ngpt_ds import distributed

    env = distributed.discover()
    bench = preset_engine(args.config, args.ds, env, sphere_hook=True)
    engine, model_cfg, plan, hook = bench.engine, bench.model, bench.plan, bench.hook

    all_reduces_before = hook.all_reduces
    gen = torch.Generator().manual_seed(dist.get_rank())

    def batch():
        tokens = torch.randint(0, model_cfg.vocab_size, (plan.micro_batch, model_cfg.seq_len + 1), generator=gen)
        return tokens.to(engine.device)

    def sync():
        if engine.device.type == "cuda":
            torch.cuda.synchronize()

    step_seconds, hook_seconds, hook_calls = measure(engine, hook, batch, args.steps, WARMUP, sync)
    buffer_floats = sum(unit.n_slots for unit in hook.units)
    master_floats = sum(piece.values.numel() for unit in hook.units for piece in unit.pieces)
    totals = torch.tensor([sum(step_seconds), sum(hook_seconds)], dtype=torch.float64)
    dist.all_reduce(totals)
    deviation = hook.max_deviation()
    if dist.get_rank() == 0:
        step_ms = 1e3 * totals[0].item() / (len(step_seconds) * env.world_size)
        hook_ms = 1e3 * totals[1].item() / (len(hook_seconds) * env.world_size)
        accum = engine.gradient_accumulation_steps()
        result = {
            "config": args.config,
            "deepspeed": os.path.basename(args.ds),
            "ranks": env.world_size,
            "device": str(engine.device),
            "steps": len(step_seconds),
            "micro_batches_per_step": accum,
            "hook_calls_per_step": sum(hook_calls) / len(hook_calls),
            "step_ms": step_ms,
            "hook_ms": hook_ms,
            "hook_share_of_step": hook_ms / step_ms,
            "all_reduces_per_step": (hook.all_reduces - all_reduces_before) / (args.steps + WARMUP),
            "hook_buffer_bytes": 4 * buffer_floats,
            "sphere_master_bytes_on_rank0": 4 * master_floats,
            "max_norm_deviation_after": deviation,
        }
        print(
            f"renorm hook, {args.config}, {result['deepspeed']}, {env.world_size} ranks on {engine.device}: "
            f"step {step_ms:.1f} ms, hook {hook_ms:.2f} ms = {100 * result['hook_share_of_step']:.2f}% of the step "
            f"(goal < 3%); extra memory: a {result['hook_buffer_bytes'] / 1024:.1f} KiB buffer next to rank 0's "
            f"{result['sphere_master_bytes_on_rank0'] / 2**20:.1f} MiB of fp32 master matrices; "
            f"max | ||w|| - 1 | = {deviation:.1e}"
        )
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        if args.docs:
            from report import command_line, machine, update_section

            update_section(
                "renorm_cost",
                f"Command: `{command_line()}`  \nMachine: {machine()}\n\n"
                "Per optimizer step (the micro-batches of one gradient accumulation, then engine.step), "
                f"mean of {len(step_seconds)} steps after {WARMUP} warm-up steps; the hook's time is summed "
                "over its calls in the step (one per parameter group).\n\n"
                "| config | ranks | micro-batches/step | hook calls/step | step ms | hook ms | hook share | "
                "all-reduces/step | hook buffer | rank 0's fp32 sphere matrices |\n"
                "|---|---|---|---|---|---|---|---|---|---|\n"
                f"| {args.config}, {result['deepspeed']} | {env.world_size} | {accum} | "
                f"{result['hook_calls_per_step']:g} | {step_ms:.1f} | {hook_ms:.2f} | "
                f"**{100 * result['hook_share_of_step']:.2f}%** | {result['all_reduces_per_step']:.0f} | "
                f"{result['hook_buffer_bytes'] / 1024:.1f} KiB | "
                f"{result['sphere_master_bytes_on_rank0'] / 2**20:.1f} MiB |",
            )
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    from ngpt_ds.distributed import exit_process

    sys.exit(exit_process(main()))  # no interpreter teardown after a process group (see there)
