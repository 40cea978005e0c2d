"""nGPT's excess eager operators at `tiny`: each form before a change, or as it is, against a cheaper candidate.

    python bench/excess_forms.py [--rounds 20] [--passes 30] [--threads N] [--clock wall|cpu] [--pair NAME ...]

Issue 14's nGPT/GPT ≤ 1.03 at `tiny`, eager: the operators nGPT's step has beyond GPT's are many small ones
(docs/benchmarks.md, "nGPT against GPT, operator by operator"). This times, in one process, pairs of forms of
one part at `tiny`'s shapes in bf16 (8 x 256 tokens, d 192, 4 heads of 48), forward plus backward where it has
one, A and B alternating within each round (which goes first alternating too), and prints per pair the medians
of A and B and of B / A per round (min-max over rounds). Every pair's B gives A's values bit for bit (checked
with torch.equal before timing; a pair that does not stops the script).

- `norm qk`, `norm h`: `l2_normalize` before 2026-12-06 (its backward cast the fp32 1 / ||x|| to bf16 again)
  against the current one (it multiplies by the forward's bf16 factor);
- `norm qk saved expansion`: `l2_normalize` at q and k's shape as of commit 9e77a60 (the bf16 factor kept as
  [rows, 1], copied to q and k's whole shape again in the backward) against the current one (the forward's
  expanded copy kept for the backward);
- `update`: the eq. 10-11 update (`block_update`) likewise, before against current;
- `hook rows`: the hook's row sums (`MasterPiece.add_squares` over `tiny`'s row-normalized fp32 masters, one
  rank), `sums[...] += norms.square()` against the squares in place added into the view (current);
- `q scale`: q <- s_qk^2 Norm(q) (eq. 15-16) after q and k's one Norm, through autograd (`unbind`, then a
  multiply: its backward makes dq * s_qk^2 and then stacks it with dk) against a candidate autograd function
  whose backward writes dq * s_qk^2 and dk straight into the halves of one gradient tensor;
- `dot out fp32`: the backward's row dot product of Norm, `(g * y).sum(dtype=float32)` (a bf16 product, then
  a copy to fp32 inside the sum) against the product written into an fp32 tensor (`torch.mul(g, y, out=)`, the
  same bf16-rounded values) and summed without a cast;
- `dot out fp32 qk`: the same at q and k's shape;
- `row factor qk`: `_scale_rows` at q and k's shape (the factor expanded to the whole shape first, as eager runs
  it on the CPU for rows 48 wide) against the plain broadcast multiply: the check of that earlier choice;
- `model`: a bf16 nGPT at `tiny`, forward plus backward (loss and every gradient; `--model-passes` per round),
  with Norm and the update as before 2026-12-06 swapped in against the current ones: both changes in place;
- `lerp`: the update's lerp(h, target, alpha) with alpha [192] broadcast against alpha expanded to h's shape.

glibc's allocator is set as the trainer sets it (`ngpt_ds.hostmem.keep_freed_memory`). The calls per `tiny`
step turn a pair's difference into ms per step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402
from report import add_timing_arguments, apply_timing_arguments, count  # noqa: E402

from ngpt_ds.model import layers, ngpt  # noqa: E402
from ngpt_ds.model.layers import _scale_rows, _scale_rows_, l2_normalize, tangent_rows  # noqa: E402
from ngpt_ds.train.sphere_pieces import MasterPiece  # noqa: E402


def _tangent_rows_before(grad: torch.Tensor, y: torch.Tensor, inv_norm: torch.Tensor, dim: int = -1) -> torch.Tensor:
    dot = (grad * y).sum(dim=dim, keepdim=True, dtype=inv_norm.dtype)
    out = _scale_rows(y, dot.to(grad.dtype))
    torch.sub(grad, out, out=out)
    return _scale_rows_(out, inv_norm.to(grad.dtype))


class _L2NormalizeBefore(torch.autograd.Function):
    """`layers._L2Normalize` before 2026-12-06 (eager path)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dim: int) -> torch.Tensor:
        inv_norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32).reciprocal_()
        y = _scale_rows(x, inv_norm.to(x.dtype))
        ctx.dim = dim
        ctx.save_for_backward(y, inv_norm)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        y, inv_norm = ctx.saved_tensors
        return _tangent_rows_before(grad, y, inv_norm, ctx.dim), None


class _BlockUpdateBefore(torch.autograd.Function):
    """`ngpt._BlockUpdate` before 2026-12-06, for one dtype (bf16 here)."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        inv_x = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).reciprocal_()
        target = _scale_rows(x, inv_x.to(x.dtype))
        m = torch.lerp(h, target, alpha)
        inv_m = torch.linalg.vector_norm(m, dim=-1, keepdim=True, dtype=torch.float32).reciprocal_()
        y = _scale_rows(m, inv_m.to(m.dtype))
        ctx.save_for_backward(h, target, alpha, y, inv_m, inv_x)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, target, alpha, y, inv_m, inv_x = ctx.saved_tensors
        dm = _tangent_rows_before(grad, y, inv_m)
        dh = dm * (1 - alpha)
        dalpha = (target - h).mul_(dm).sum(tuple(range(dm.dim() - 1)))
        dx = _tangent_rows_before(dm.mul_(alpha), target, inv_x)
        return dh, dx, dalpha


class _ScaledQ(torch.autograd.Function):
    """Candidate: (q * s2, k) for q, k = y.unbind(2), its backward writing dq * s2 and dk into one tensor."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, s2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = y.unbind(2)
        ctx.save_for_backward(q, s2)
        return q * s2, k

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_q: torch.Tensor, g_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, s2 = ctx.saved_tensors
        dy = g_q.new_empty(*g_q.shape[:2], 2, *g_q.shape[2:])
        torch.mul(g_q, s2, out=dy[:, :, 0])
        dy[:, :, 1].copy_(g_k)
        return dy, (g_q * q).sum((0, 1))


class _L2NormalizeFactorOnly(torch.autograd.Function):
    """`layers._L2Normalize` as of 2026-12-06's first change (commit 9e77a60): it kept the factor 1 / ||x|| in x's
    dtype as [rows, 1] for the backward, which copied it to x's whole shape again where `_scale_rows` does."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dim: int) -> torch.Tensor:
        inv_norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32).reciprocal_()
        factor = inv_norm.to(x.dtype)
        y = _scale_rows(x, factor)
        ctx.dim = dim
        ctx.save_for_backward(y, inv_norm, factor)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        y, inv_norm, factor = ctx.saved_tensors
        return tangent_rows(grad, y, inv_norm, ctx.dim, factor), None


def _row_sums_before(piece: MasterPiece, sums: torch.Tensor) -> None:
    head, body, tail, first_row, _first_col, body_row = piece._split()
    s = piece.slot
    if head.numel():
        sums[s + first_row] += head.dot(head)
    if body.numel():
        sums[s + body_row : s + body_row + body.shape[0]] += torch.linalg.vector_norm(body, dim=1).square()
    if tail.numel():
        sums[s + body_row + body.shape[0]] += tail.dot(tail)


Pass = Callable[[], Any]


def model_pass(before_today: bool) -> Pass:
    """One forward plus backward of a bf16 nGPT at `tiny` (the loss and every gradient), with Norm and the
    update as before 2026-12-06 (`_L2NormalizeBefore`, `_BlockUpdateBefore` swapped into the model's modules
    while it runs) or as they are."""
    from ngpt_ds.model.config import load_model_config
    from ngpt_ds.model.factory import build_model

    shape = {"vocab_size": 4096, "n_layer": 4, "n_embd": 192, "n_head": 4, "seq_len": 256}
    torch.manual_seed(0)
    model = build_model(load_model_config("ngpt_tiny", shape)).bfloat16()
    params = list(model.parameters())
    generator = torch.Generator().manual_seed(1)
    tokens, targets = (torch.randint(0, 4096, (8, 256), generator=generator) for _ in range(2))
    current = (layers._L2Normalize, ngpt._BlockUpdate)

    def run() -> list[torch.Tensor]:
        if before_today:
            layers._L2Normalize, ngpt._BlockUpdate = _L2NormalizeBefore, _BlockUpdateBefore  # type: ignore[assignment, misc]
        try:
            _, loss = model(tokens, targets)
            return [loss.detach(), *torch.autograd.grad(loss, params)]
        finally:
            layers._L2Normalize, ngpt._BlockUpdate = current  # type: ignore[assignment, misc]

    return run


def pairs() -> dict[str, tuple[Pass, Pass, int]]:
    """name -> (form A, form B, calls per tiny step); each pass returns what is compared bit for bit."""
    generator = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).bfloat16()

    def fwd_bwd(forward: Callable[..., Any], inputs: list[torch.Tensor], grads: list[torch.Tensor]) -> Pass:
        leaves = [t.clone().requires_grad_() for t in inputs]

        def run() -> list[torch.Tensor]:
            outs = forward(*leaves)
            outs = list(outs) if isinstance(outs, tuple) else [outs]
            return [*outs, *torch.autograd.grad(outs, leaves, grads[: len(outs)])]

        return run

    def before(x: torch.Tensor) -> torch.Tensor:
        return _L2NormalizeBefore.apply(x, -1)

    qk, g_qk, h, g_h = rand(8, 256, 2, 4, 48), rand(8, 256, 2, 4, 48), rand(8, 256, 192), rand(8, 256, 192)
    stream = l2_normalize(rand(8, 256, 192)).detach()
    alpha = torch.full((192,), 0.05, dtype=torch.bfloat16)
    table: dict[str, tuple[Pass, Pass, int]] = {
        "norm qk": (fwd_bwd(before, [qk], [g_qk]), fwd_bwd(l2_normalize, [qk], [g_qk]), 4),
        "norm qk saved expansion": (
            fwd_bwd(lambda x: _L2NormalizeFactorOnly.apply(x, -1), [qk], [g_qk]),
            fwd_bwd(l2_normalize, [qk], [g_qk]),
            4,
        ),
        "norm h": (fwd_bwd(before, [h], [g_h]), fwd_bwd(l2_normalize, [h], [g_h]), 1),
        "update": (
            fwd_bwd(_BlockUpdateBefore.apply, [stream, h, alpha], [g_h]),
            fwd_bwd(ngpt.block_update, [stream, h, alpha], [g_h]),
            8,
        ),
    }
    # the hook's row-normalized masters of tiny (embedding, head, per layer qkv and up_gate), whole, one rank
    shapes = [(4096, 192), (4096, 192)] + [(576, 192), (1536, 192)] * 4
    pieces = [MasterPiece(torch.randn(r * c, generator=generator), 0, r, c, 1, 0) for r, c in shapes]

    def rows(add: Callable[[MasterPiece, torch.Tensor], None]) -> Pass:
        def run() -> list[torch.Tensor]:
            out = []
            for piece in pieces:
                sums = torch.zeros(piece.rows)
                add(piece, sums)
                out.append(sums)
            return out

        return run

    table["hook rows"] = (rows(_row_sums_before), rows(MasterPiece.add_squares), 1)
    y = l2_normalize(qk)
    s2 = rand(4, 48).abs()
    g_q, g_k = rand(8, 256, 4, 48), rand(8, 256, 4, 48)

    def q_scale_autograd(y: torch.Tensor, s2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = y.unbind(2)
        return q * s2, k

    table["q scale"] = (
        fwd_bwd(q_scale_autograd, [y, s2], [g_q, g_k]),
        fwd_bwd(_ScaledQ.apply, [y, s2], [g_q, g_k]),
        4,
    )

    def dot_cast() -> torch.Tensor:
        return (g_h * stream).sum(dim=-1, keepdim=True, dtype=torch.float32)

    def dot_out() -> torch.Tensor:
        return torch.mul(g_h, stream, out=torch.empty(g_h.shape, dtype=torch.float32)).sum(dim=-1, keepdim=True)

    table["dot out fp32"] = (dot_cast, dot_out, 17)
    y_qk = y.detach()
    table["dot out fp32 qk"] = (
        lambda: (g_qk * y_qk).sum(dim=-1, keepdim=True, dtype=torch.float32),
        lambda: torch.mul(g_qk, y_qk, out=torch.empty(g_qk.shape, dtype=torch.float32)).sum(dim=-1, keepdim=True),
        4,
    )
    factor = rand(8, 256, 2, 4, 1)
    table["row factor qk"] = (lambda: _scale_rows(qk, factor), lambda: qk * factor, 12)
    table["model"] = (model_pass(before_today=True), model_pass(before_today=False), 1)
    table["lerp"] = (lambda: torch.lerp(stream, h, alpha), lambda: torch.lerp(stream, h, alpha.expand_as(h)), 8)
    return table


def same(a: Any, b: Any) -> bool:
    a = a if isinstance(a, list) else [a]
    b = b if isinstance(b, list) else [b]
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=count(1), default=20, help="rounds, A and B alternating")
    parser.add_argument("--passes", type=count(1), default=30, help="passes per form and round")
    parser.add_argument("--pair", action="append", help="time only this pair (repeatable)")
    parser.add_argument("--model-passes", type=count(1), default=2, help="passes per form and round of `model`")
    add_timing_arguments(parser)
    args = parser.parse_args()
    if not apply_timing_arguments(args):
        return 2
    from ngpt_ds.hostmem import keep_freed_memory

    print(f"allocator: {keep_freed_memory()}")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    table = pairs()
    names = args.pair or list(table)
    unknown = [name for name in names if name not in table]
    if unknown:
        print(f"error: no pair {unknown[0]!r}; pairs: {', '.join(table)}", file=sys.stderr)
        return 2
    for name in names:
        a, b, _ = table[name]
        if not same(a(), b()):
            print(f"error: pair {name!r}: B's values differ from A's", file=sys.stderr)
            return 1
    times: dict[str, dict[str, list[float]]] = {name: {"A": [], "B": []} for name in names}
    for round_index in range(args.rounds):
        for name in names:
            forms = {"A": table[name][0], "B": table[name][1]}
            for key in "AB" if round_index % 2 == 0 else "BA":
                run = forms[key]
                began = clock()
                passes = args.model_passes if name == "model" else args.passes
                for _ in range(passes):
                    run()
                times[name][key].append((clock() - began) / passes * 1e3)
    print(
        f"tiny shapes, bf16; {torch.get_num_threads()} threads, {args.clock} clock; medians of {args.rounds} "
        f"rounds of {args.passes} passes per form ({args.model_passes} for `model`); B's values equal A's bit for bit"
    )
    print("| pair | A ms | B ms | B / A per round, median (min-max) | calls per step | B - A, ms per step |")
    print("|---|---|---|---|---|---|")
    for name in names:
        ta, tb = times[name]["A"], times[name]["B"]
        ratios = [y / x for x, y in zip(ta, tb)]
        ma, mb, calls = statistics.median(ta), statistics.median(tb), table[name][2]
        print(
            f"| {name} | {ma:.3f} | {mb:.3f} | {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) "
            f"| {calls} | {(mb - ma) * calls:+.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
