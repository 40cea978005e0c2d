"""ZeRO settings that could save work in a 1-rank step: are the losses bit-identical, and is the step faster?

    python bench/zero_knobs.py [--config ngpt_tiny] [--ds ds_configs/zero2.json] [--steps 10] [--rounds 10]
                               [--threads N] [--clock wall|cpu] [--variant NAME ...]
    python -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port PORT \
        bench/zero_knobs.py --threads 1 --rounds 0                    # the loss check at 2 ranks

One process builds an engine from the DeepSpeed JSON as given ("base") and one per variant, each a
single change to it (VARIANTS). Every engine starts from the same seed and trains `--steps` steps on the
same token batches (each rank its own); the script prints whether each variant's losses and final
weights are bit-identical to base's. Then `--rounds` rounds time one step of every engine in turn, so
all see the same machine state (bench/step_time.py), and it prints each variant's median step time over
base's. On a shared machine use `--threads 1 --clock cpu` (bench/mfu.py explains why).

A variant is worth putting into ds_configs/ only where it is bit-identical at 1 and 2 ranks and faster.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from report import add_timing_arguments, apply_timing_arguments, count  # noqa: E402

#: name -> (section, key, value): one change to the JSON's zero_optimization (or data_types) section
VARIANTS: dict[str, tuple[str, str, Any]] = {
    "no_contiguous_gradients": ("zero_optimization", "contiguous_gradients", False),
    "bucket_5e8": ("zero_optimization", "reduce_bucket_size", 500_000_000),
    "no_multi_rank_allreduce": ("zero_optimization", "use_multi_rank_bucket_allreduce", False),
    "no_reduce_scatter": ("zero_optimization", "reduce_scatter", False),
    "grad_accum_fp32": ("data_types", "grad_accum_dtype", "fp32"),
}


def variant_ds(base: dict[str, Any], name: str) -> dict[str, Any]:
    """The base JSON with variant `name`'s one change."""
    ds = copy.deepcopy(base)
    section, key, value = VARIANTS[name]
    ds.setdefault(section, {})[key] = value
    return ds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ngpt_tiny", help="preset or YAML (default ngpt_tiny)")
    parser.add_argument("--ds", default=str(REPO / "ds_configs/zero2.json"), help="DeepSpeed JSON (the base)")
    parser.add_argument("--steps", type=count(1), default=10, help="steps compared for bit-identity")
    parser.add_argument("--rounds", type=count(0), default=10, help="timed rounds after the comparison")
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="default: all")
    add_timing_arguments(parser)
    args = parser.parse_args()
    if not apply_timing_arguments(args):
        return 2

    import torch
    from engines import _start, preset_engine  # noqa: PLC2701  (the bench scripts' shared construction)

    from ngpt_ds import distributed

    env = distributed.discover()
    base = preset_engine(args.config, args.ds, env)
    names = ["base", *(args.variant or VARIANTS)]
    engines = {"base": base}
    for name in names[1:]:
        engines[name] = _start(
            args.config, base.model, _train_cfg(args.config), variant_ds(base.ds, name), args.ds, base.plan, None
        )
    model, plan = base.model, base.plan
    gen = torch.Generator().manual_seed(1234 + env.rank)
    batches = [
        torch.randint(0, model.vocab_size, (plan.micro_batch, model.seq_len + 1), generator=gen)
        for _ in range(args.steps)
    ]

    def step(engine: Any, tokens: torch.Tensor) -> float:
        _, loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()
        return float(loss.detach().float())

    initial = [p.detach().float().clone() for p in base.engine.module.parameters()]
    losses = {name: [step(b.engine, t) for t in batches] for name, b in engines.items()}
    weights = {name: [p.detach().float().clone() for p in b.engine.module.parameters()] for name, b in engines.items()}
    rank0 = env.rank == 0
    if rank0:
        print(f"{env.world_size} rank(s), {args.steps} steps, {torch.get_num_threads()} threads")
        moved = max(float((a - b).abs().max()) for a, b in zip(weights["base"], initial, strict=True))
        print(f"base losses: {' '.join(f'{x:.6f}' for x in losses['base'])}; weights moved by {moved:.3e} at most")
    for name in names[1:]:
        same_loss = losses[name] == losses["base"]
        diff = max(float((a - b).abs().max()) for a, b in zip(weights[name], weights["base"], strict=True))
        worst = max(abs(a - b) for a, b in zip(losses[name], losses["base"], strict=True))
        if rank0:
            print(
                f"{name}: losses bit-identical {same_loss} (largest difference {worst:.3e}); weights differ by {diff:.3e}"
            )

    if args.rounds and rank0:
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        tokens = batches[0]
        times: dict[str, list[float]] = {name: [] for name in names}
        zero_times: dict[str, list[float]] = {name: [] for name in names}
        step_times: dict[str, list[float]] = {name: [] for name in names}
        for round_index in range(args.rounds):
            # each round starts at another engine: the first engine of a round ran slower here (all variants
            # measured 0.97-0.98x base, base first, in rounds of a fixed order)
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                b = engines[name]
                start = clock()
                _, loss = b.engine(tokens[:, :-1], tokens[:, 1:])
                backward = clock()
                b.engine.backward(loss)
                optimizer = clock()
                b.engine.step()
                end = clock()
                times[name].append(end - start)
                zero_times[name].append(end - backward)
                step_times[name].append(end - optimizer)
        base_ms = statistics.median(times["base"]) * 1e3
        load = open("/proc/loadavg").read().split()[:2] if os.path.exists("/proc/loadavg") else ["?", "?"]
        print(
            f"{args.rounds} interleaved rounds, {args.clock} clock; load average {load[0]} (1 min), {load[1]} (5 min)"
        )
        print(f"base: {base_ms:.1f} ms")
        for name in names[1:]:
            ratios = [v / b for v, b in zip(times[name], times["base"], strict=True)]
            ms = statistics.median(times[name]) * 1e3
            print(
                f"{name}: {ms:.1f} ms, variant/base {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
            )
        # backward + ZeRO's step, where the settings act (their gradient hooks, buckets and flat copies),
        # and engine.step alone (the flat fp32 gradient, AdamW, the copy back to bf16, the hook)
        for part, part_times in (("backward+step", zero_times), ("engine.step", step_times)):
            print(f"{part} only, base: {statistics.median(part_times['base']) * 1e3:.1f} ms")
            for name in names[1:]:
                ratios = [v / b for v, b in zip(part_times[name], part_times["base"], strict=True)]
                ms = statistics.median(part_times[name]) * 1e3
                print(
                    f"  {name}: {ms:.1f} ms, variant/base {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
                )
    distributed.exit_process(0)
    return 0


def _train_cfg(config: str) -> Any:
    from ngpt_ds.train.config import load_model_and_train

    return load_model_and_train(config, train_overrides={"compile": False})[1]


if __name__ == "__main__":
    sys.exit(main())
