"""Upper bounds of issue 14's remaining eager leads at `tiny`: what each part of nGPT's extra step time costs.

    python bench/gap_parts.py [--rounds 10] [--passes 50] [--threads N] [--clock wall|cpu]

nGPT's eager step at `tiny` costs about 13 ms more than GPT's, spread over many small parts
(docs/benchmarks.md, "nGPT against GPT, operator by operator"). This times, in one process with the parts'
order rotating every round, the parts that the remaining ideas could shorten, each at `tiny`'s shape in bf16
(8 x 256 tokens, d 192, 4 heads of 48), forward plus backward where it has one:

- `scales`: every scale vector's effective value (s * init/scale, |.| for alpha, s_qk^2, [s_u; s_v sqrt(d)],
  s_z) of a 4-layer model, with their backward: all that computing them "once per step in one op" could save;
- `norm h`, `norm qk`: Norm (`l2_normalize`) of the residual stream's and q/k's shapes, as the model runs it;
- `reductions fp32 h`, `reductions fp32 qk`: the two fp32-accumulated reductions of one Norm (the forward's
  `vector_norm(x, dtype=float32)`, the backward's `(g * y).sum(dtype=float32)`), each of which copies its whole
  bf16 input to fp32 first; `reductions bf16 h`, `reductions bf16 qk`: the same without `dtype`, accumulated in
  fp32 but rounded to bf16 (not the model's numbers). Their difference, printed last as the fp32 casts per step,
  is the bound of removing the casts;
- `rms_norm h`: GPT's `F.rms_norm` with its weight, for comparison.

glibc's allocator is set as the trainer sets it (`ngpt_ds.hostmem.keep_freed_memory`). It prints each part's
median ms per pass, its calls per `tiny` step and the product. Times per part, not a step: the per-step column is
the most a change of that part could save.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from report import add_timing_arguments, apply_timing_arguments, count  # noqa: E402

#: Norm calls per `tiny` step: the embedding's and, per layer, the eq. 10-11 updates' two each (h's shape);
#: q and k's one per layer.
NORMS_H, NORMS_QK = 1 + 4 * 2 * 2, 4


def backward_of(forward: Callable[[], list], inputs: list) -> Callable[[], object]:
    """forward plus backward of `forward`'s outputs against fixed upstream gradients, to `inputs` (returned,
    not accumulated into `.grad`: a training step's first backward stores its gradients, it adds none)."""
    import torch

    grads = [torch.randn_like(o) for o in forward()]
    return lambda: torch.autograd.grad(forward(), inputs, grads)


def parts() -> dict[str, tuple[Callable[[], object], int]]:
    """name -> (one pass, calls per tiny step)."""
    import torch
    import torch.nn.functional as F

    from ngpt_ds.model.config import load_model_config
    from ngpt_ds.model.factory import build_model
    from ngpt_ds.model.layers import l2_normalize

    shape = {"vocab_size": 4096, "n_layer": 4, "n_embd": 192, "n_head": 4, "seq_len": 256}
    model = build_model(load_model_config("ngpt_tiny", shape)).bfloat16()

    def scales() -> list:
        outs = [model.s_z()]
        for block in model.blocks:
            attn, mlp = block.attn, block.mlp
            outs += [block.attn_alpha(), block.mlp_alpha(), attn.s_qk().view(-1, attn.head_dim).square()]
            outs.append(torch.cat([mlp.s_u(), mlp.s_v() * mlp.v_multiplier]))
        return outs

    generator = torch.Generator().manual_seed(0)
    h = torch.randn(8, 256, 192, generator=generator).bfloat16()
    qk = torch.randn(8, 256, 2, 4, 48, generator=generator).bfloat16()
    weight = torch.ones(192, dtype=torch.bfloat16, requires_grad=True)

    def norm(x: torch.Tensor) -> Callable[[], object]:
        leaf = x.clone().requires_grad_()
        return backward_of(lambda: [l2_normalize(leaf)], [leaf])

    def reductions(x: torch.Tensor, fp32: bool) -> Callable[[], None]:
        g = torch.randn(x.shape, generator=generator).bfloat16()
        dtype = torch.float32 if fp32 else None

        def run() -> None:
            torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=dtype)
            (g * x).sum(dim=-1, keepdim=True, dtype=dtype)

        return run

    leaf_h = h.clone().requires_grad_()
    return {
        "scales": (backward_of(scales, [p for n, p in model.named_parameters() if n.endswith(".param")]), 1),
        "norm h": (norm(h), NORMS_H),
        "norm qk": (norm(qk), NORMS_QK),
        "reductions fp32 h": (reductions(h, True), NORMS_H),
        "reductions bf16 h": (reductions(h, False), NORMS_H),
        "reductions fp32 qk": (reductions(qk, True), NORMS_QK),
        "reductions bf16 qk": (reductions(qk, False), NORMS_QK),
        "rms_norm h": (backward_of(lambda: [F.rms_norm(leaf_h, (192,), weight)], [leaf_h, weight]), 9),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=count(1), default=10, help="rounds, the parts' order rotating")
    parser.add_argument("--passes", type=count(1), default=50, help="passes per part and round")
    add_timing_arguments(parser)
    args = parser.parse_args()
    if not apply_timing_arguments(args):
        return 2
    from ngpt_ds.hostmem import keep_freed_memory

    print(f"allocator: {keep_freed_memory()}")  # as the trainer sets it: fresh temporaries without page faults
    import torch

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    table = parts()
    names = list(table)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up
        table[name][0]()
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            run = table[name][0]
            began = clock()
            for _ in range(args.passes):
                run()
            times[name].append((clock() - began) / args.passes * 1e3)
    print(
        f"tiny shapes, bf16; {torch.get_num_threads()} threads, {args.clock} clock; medians of {args.rounds} "
        f"rounds of {args.passes} passes per part (min-max over rounds)"
    )
    print("| part | ms per pass | calls per step | ms per step |")
    print("|---|---|---|---|")
    median = {name: statistics.median(times[name]) for name in names}
    for name in names:
        calls = table[name][1]
        low, high = min(times[name]), max(times[name])
        print(f"| {name} | {median[name]:.3f} ({low:.3f}-{high:.3f}) | {calls} | {median[name] * calls:.2f} |")
    casts = sum(
        (median[f"reductions fp32 {s}"] - median[f"reductions bf16 {s}"]) * table[f"reductions fp32 {s}"][1]
        for s in ("h", "qk")
    )
    print(f"fp32 casts of the Norms' reductions, per step: {casts:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
