"""Per-row scaling on the CPU: a broadcast multiply against one of two full-size tensors, side by side.

    python bench/row_scale.py [--config ngpt_tiny] [--ds ds_configs/zero2.json] [--rounds 6] [--reps 40]
                              [--steps 4] [--threads N] [--json F] [--docs]

`l2_normalize` multiplies each row by one factor (1/||x||, and in its backward the row's dot product and
1/||x|| again). For q and k the rows are one head, head_dim long; at `ngpt_tiny` that is 48, not a multiple
of the 32 bf16 values of an AVX512 vector, and the broadcast multiply ran slower than a multiply of two
full-size tensors. `_scale_rows` (ngpt_ds/model/layers.py) expands the factor first in that case.

This times, in one process and alternating within every round, the two forms ("broadcast", the plain
`x * scale`; "expanded", the current code):
- the part: `l2_normalize` forward plus backward of a bf16 [batch, T, 2, heads, head_dim] q/k tensor,
  `--reps` passes per form and round;
- whole engine steps of the preset (bench/engines.py, with the hypersphere hook), `--steps` per form and
  round (0: skip), eager.
It first checks that both forms give the same values and input gradients, bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402
from report import json_file  # noqa: E402

from ngpt_ds.model import layers  # noqa: E402

CURRENT = layers._scale_rows


def broadcast(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The form before: one broadcast multiply."""
    return x * scale


FORMS = {"broadcast": broadcast, "expanded": CURRENT}


def use(name: str) -> None:
    layers._scale_rows = FORMS[name]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ngpt_tiny", help="preset or YAML (default ngpt_tiny)")
    parser.add_argument("--ds", default="ds_configs/zero2.json", help="DeepSpeed JSON of the engine steps")
    parser.add_argument("--rounds", type=int, default=6, help="rounds, each timing both forms")
    parser.add_argument("--reps", type=int, default=40, help="l2_normalize passes per form and round")
    parser.add_argument("--steps", type=int, default=4, help="engine steps per form and round (0: none)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=json_file, help="also write the numbers here")
    parser.add_argument("--docs", action="store_true", help="also write the table into docs/benchmarks.md")
    args = parser.parse_args()
    if min(args.rounds, args.reps) < 1 or args.steps < 0:
        parser.error("--rounds and --reps must be at least 1, --steps at least 0")
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # init_process_group keeps a set OMP_NUM_THREADS

    from engines import preset_engine

    from ngpt_ds import distributed

    bench = preset_engine(args.config, args.ds, distributed.discover({}))
    engine, config, plan = bench.engine, bench.model, bench.plan
    B, T, H, D = plan.micro_batch, config.seq_len, config.n_head, config.head_dim
    torch.manual_seed(0)
    qk = torch.randn(B, T, 2, H, D, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(B, T, 2, H, D, dtype=torch.bfloat16)
    tokens = torch.randint(0, config.vocab_size, (B, T + 1))

    def part() -> torch.Tensor:
        qk.grad = None
        y = layers.l2_normalize(qk)
        y.backward(grad)
        return y

    def step() -> None:
        _, loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()

    outputs = {}
    for name in FORMS:
        use(name)
        y = part()
        outputs[name] = (y.detach().clone(), qk.grad.clone())
    same = all(torch.equal(a, b) for a, b in zip(outputs["broadcast"], outputs["expanded"]))

    part_ms: dict[str, list[float]] = {name: [] for name in FORMS}
    step_ms: dict[str, list[float]] = {name: [] for name in FORMS}
    for name in FORMS:  # warm-up
        use(name)
        for _ in range(2 if args.steps else 0):
            step()
    for r in range(args.rounds):
        order = list(FORMS) if r % 2 == 0 else list(reversed(FORMS))  # the order alternates per round
        for name in order:
            use(name)
            times = []
            for _ in range(args.reps):
                start = time.perf_counter()
                part()
                times.append(time.perf_counter() - start)
            part_ms[name].append(statistics.median(times) * 1e3)
            if args.steps:
                times = []
                for _ in range(args.steps):
                    start = time.perf_counter()
                    step()
                    times.append(time.perf_counter() - start)
                step_ms[name].append(statistics.median(times) * 1e3)
    use("expanded")

    def ratios(ms: dict[str, list[float]]) -> list[float]:
        return [e / b for e, b in zip(ms["expanded"], ms["broadcast"])]

    load = os.getloadavg()
    result = {
        "config": args.config,
        "shape": {"batch": B, "seq_len": T, "n_head": H, "head_dim": D},
        "threads": torch.get_num_threads(),
        "bit_identical": same,
        "part_ms": part_ms,
        "step_ms": step_ms,
        "load_average_after": load,
    }
    lines = [f"{args.config}, {B} x {T} tokens, {H} heads of {D}, bf16, {result['threads']} threads"]
    rows = ["| timed | broadcast ms | expanded ms | expanded / broadcast, median (range) |", "|---|---|---|---|"]
    for label, ms in (("l2_normalize of q/k, forward+backward", part_ms), ("engine step", step_ms)):
        if not ms["broadcast"]:
            continue
        rs = ratios(ms)
        med = {name: statistics.median(v) for name, v in ms.items()}
        result[label] = {"median_ms": med, "ratio": statistics.median(rs), "ratio_min": min(rs), "ratio_max": max(rs)}
        lines.append(
            f"{label}: broadcast {med['broadcast']:.3f} ms, expanded {med['expanded']:.3f} ms; expanded/broadcast "
            f"{statistics.median(rs):.3f} ({min(rs):.3f}-{max(rs):.3f} over {args.rounds} rounds)"
        )
        rows.append(
            f"| {label} | {med['broadcast']:.3f} | {med['expanded']:.3f} | "
            f"**{statistics.median(rs):.3f}** ({min(rs):.3f}-{max(rs):.3f}) |"
        )
    lines.append(f"values and input gradients bit-identical: {same}; load average after: {load[0]:.2f}, {load[1]:.2f}")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.docs:
        from report import command_line, machine, update_section

        update_section(
            "row_scale",
            f"Command: `{command_line()}`  \nMachine: {machine()}; {lines[0]}; medians "
            f"of {args.reps} passes and {args.steps} steps per form and round, {args.rounds} rounds; load average "
            f"after the run {load[0]:.2f} (1 min), {load[1]:.2f} (5 min).\n\n"
            + "\n".join(rows)
            + f"\n\nValues and input gradients bit-identical: {same}.",
        )
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    from ngpt_ds.distributed import exit_process

    sys.exit(exit_process(main()))  # no interpreter teardown after a process group (see there)
