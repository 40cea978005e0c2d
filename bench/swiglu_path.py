"""SwiGLU's gate, u * SiLU(v), forward plus backward: autograd's form against `gated_silu`, alternating.

    python bench/swiglu_path.py [--config ngpt_tiny] [--batch 8] [--rounds 10] [--passes 40] [--threads N] [--clock wall|cpu]

The gate alone, on random bf16 up/gate outputs of the preset's micro-batch shape ([B, T, 2 * hidden]):
autograd's form (`chunk`, `F.silu`, `*`, as ngpt_ds.model.blocks.SwiGLU runs it; its backward ends in a cat
of du and dv) and `_GatedSiLU` below, an autograd function whose backward writes both halves into one tensor
with `out=` (the same products, bit for bit). Tried for the trainer on 2026-12-04 and not kept: no gain
measured (docs/benchmarks.md, "What was changed, and what it gave"). Each round times `--passes`
forward+backward passes of each form, the forms' order alternating by round; the script prints the medians,
new / old per round, and whether values and gradients are bit-identical.
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


def _gated_silu_function():
    import torch
    import torch.nn.functional as F

    class _GatedSiLU(torch.autograd.Function):
        """u * SiLU(v) for [u; v] = y; the backward writes du = g * SiLU(v) and dv = silu_backward(g * u, v)
        into the two halves of one tensor instead of chunk's backward cat."""

        @staticmethod
        def forward(ctx, y):
            u, v = y.chunk(2, dim=-1)
            gate = F.silu(v)
            ctx.save_for_backward(u, v, gate)
            return u * gate

        @staticmethod
        def backward(ctx, grad):
            u, v, gate = ctx.saved_tensors
            hidden = u.shape[-1]
            dy = grad.new_empty(*grad.shape[:-1], 2 * hidden)
            torch.mul(grad, gate, out=dy[..., :hidden])
            torch.ops.aten.silu_backward.grad_input(grad * u, v, grad_input=dy[..., hidden:])
            return dy

    return _GatedSiLU.apply


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

    forms = {"old": old, "new": _gated_silu_function()}
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
        f"new / old: {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}); "
        f"values and gradients bit-identical: {identical}"
    )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
