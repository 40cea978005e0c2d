"""SwiGLU's gate, u * SiLU(v), forward plus backward: autograd's form against the model's `gated_silu`, alternating.

    python bench/swiglu_path.py [--config ngpt_tiny] [--batch 8] [--rounds 10] [--passes 40] [--threads N] [--clock wall|cpu]

The gate alone, on random bf16 up/gate outputs of the preset's micro-batch shape ([B, T, 2 * hidden]):
autograd's form (`chunk`, `F.silu`, `*`, as ngpt_ds.model.blocks.SwiGLU ran it until 2026-12-04; its backward
ends in a cat of du and dv) and `ngpt_ds.model.layers.gated_silu`, which SwiGLU runs now: in eager mode on the
CPU, an autograd function whose backward writes both halves into one tensor with `out=` (the same products,
bit for bit). docs/benchmarks.md, "What was changed, and what it gave", has the runs that decided it. Each
round times `--passes` forward+backward passes of each form, the forms' order alternating by round; the script
prints the medians, new / old per round (and in how many rounds it was below 1.0), and whether values and
gradients are bit-identical.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from report import add_timing_arguments, apply_timing_arguments, count  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ngpt_tiny", help="preset or YAML (default ngpt_tiny)")
    parser.add_argument("--batch", type=count(1), default=8, help="micro-batch (default 8, ds_configs/zero2.json's)")
    parser.add_argument("--rounds", type=count(1), default=10)
    parser.add_argument("--passes", type=count(1), default=40, help="forward+backward passes per form and round")
    add_timing_arguments(parser)
    args = parser.parse_args()
    if not apply_timing_arguments(args):
        return 2
    import torch
    import torch.nn.functional as F

    from ngpt_ds.model.layers import gated_silu
    from ngpt_ds.train.config import load_model_and_train

    model_cfg = load_model_and_train(args.config)[0]
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    shape = (args.batch, model_cfg.seq_len, 2 * model_cfg.mlp_width)
    torch.manual_seed(0)
    y = torch.randn(shape, dtype=torch.bfloat16).requires_grad_()
    g = torch.randn(shape[:-1] + (shape[-1] // 2,), dtype=torch.bfloat16)

    def old(y: torch.Tensor) -> torch.Tensor:
        u, v = y.chunk(2, dim=-1)
        return u * F.silu(v)

    forms = {"old": old, "new": gated_silu}
    results = {}
    for name, form in forms.items():
        out = form(y)
        (dy,) = torch.autograd.grad(out, y, g)
        results[name] = (out, dy)
    identical = all(torch.equal(a, b) for a, b in zip(results["old"], results["new"]))

    def timed(form) -> float:
        start = clock()
        for _ in range(args.passes):
            torch.autograd.grad(form(y), y, g)
        return (clock() - start) / args.passes

    seconds: dict[str, list[float]] = {name: [] for name in forms}
    for r in range(args.rounds + 1):
        for name in list(forms) if r % 2 else list(forms)[::-1]:
            t = timed(forms[name])
            if r:
                seconds[name].append(t)
    ratios = [n / o for n, o in zip(seconds["new"], seconds["old"])]
    print(
        f"{args.config}: gate of {list(shape)} bf16, {torch.get_num_threads()} thread(s), {args.clock} clock, "
        f"{args.rounds} rounds of {args.passes} passes"
    )
    for name in forms:
        print(f"{name}: {1e3 * statistics.median(seconds[name]):.3f} ms per forward+backward")
    print(
        f"new / old: {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}), "
        f"below 1.0 in {sum(r < 1.0 for r in ratios)} of {len(ratios)} rounds; "
        f"values and gradients bit-identical: {identical}"
    )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
