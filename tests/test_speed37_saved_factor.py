"""Two small savings of issue 14's eager step, the same values bit for bit (docs/benchmarks.md, "What was changed,
and what it gave"):

- `_L2Normalize` and `_BlockUpdate` (nGPT's Norm and its eq. 10-11 update) keep the factor 1 / ||x|| that their
  forward cast to x's dtype and multiply the backward by it, instead of casting the fp32 1 / ||x|| again: one
  cast of a [rows, 1] tensor fewer per Norm in every backward; where the forward copied that factor to x's
  whole shape (q and k's rows of 48, `_row_factor`), Norm keeps the copy, and its backward makes one copy fewer;
- the hypersphere hook's row sums (`MasterPiece.add_squares`, rows) square the norms in place and add them into
  the sum buffer's view, instead of `sums[...] += norms.square()` (a second tensor and a write-back).

Each new form is compared with a copy of the form it replaced, with torch.equal."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ngpt_ds.model import ngpt
from ngpt_ds.model.layers import _scale_rows, _scale_rows_, l2_normalize
from ngpt_ds.train.sphere_pieces import MasterPiece


def _tangent_rows_before(grad, y, inv_norm, dim=-1):
    """`layers.tangent_rows` before: it cast inv_norm to grad's dtype itself."""
    dot = (grad * y).sum(dim=dim, keepdim=True, dtype=inv_norm.dtype)
    out = _scale_rows(y, dot.to(grad.dtype))
    torch.sub(grad, out, out=out)
    return _scale_rows_(out, inv_norm.to(grad.dtype))


class _L2NormalizeBefore(torch.autograd.Function):
    """`layers._L2Normalize` before: it saved the fp32 1 / ||x|| only."""

    @staticmethod
    def forward(ctx, x, dim):
        accumulate = torch.promote_types(x.dtype, torch.float32)
        inv_norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=accumulate).reciprocal_()
        y = _scale_rows(x, inv_norm.to(x.dtype))
        ctx.dim = dim
        ctx.save_for_backward(y, inv_norm)
        return y

    @staticmethod
    def backward(ctx, grad):
        y, inv_norm = ctx.saved_tensors
        return _tangent_rows_before(grad, y, inv_norm, ctx.dim), None


class _BlockUpdateBefore(torch.autograd.Function):
    """`ngpt._BlockUpdate` before: it saved the fp32 factors only."""

    @staticmethod
    def forward(ctx, h, x, alpha):
        inv_x = torch.linalg.vector_norm(
            x, dim=-1, keepdim=True, dtype=torch.promote_types(x.dtype, torch.float32)
        ).reciprocal_()
        target = _scale_rows(x, inv_x.to(x.dtype))
        dtype = torch.promote_types(h.dtype, x.dtype)
        h_d, alpha_d = h.to(dtype), alpha.to(dtype)
        m = torch.lerp(h_d, target.to(dtype), alpha_d)
        inv_m = torch.linalg.vector_norm(
            m, dim=-1, keepdim=True, dtype=torch.promote_types(dtype, torch.float32)
        ).reciprocal_()
        y = _scale_rows(m, inv_m.to(dtype))
        ctx.save_for_backward(h_d, target, alpha_d, y, inv_m, inv_x)
        ctx.dtypes = (h.dtype, alpha.dtype)
        return y

    @staticmethod
    def backward(ctx, grad):
        h_d, target, alpha_d, y, inv_m, inv_x = ctx.saved_tensors
        h_dtype, alpha_dtype = ctx.dtypes
        dm = _tangent_rows_before(grad, y, inv_m)
        dh = dm * (1 - alpha_d)
        dalpha = (target.to(dm.dtype) - h_d).mul_(dm).sum(tuple(range(dm.dim() - 1)))
        dtarget = dm.mul_(alpha_d).to(target.dtype)
        dx = _tangent_rows_before(dtarget, target, inv_x)
        return dh.to(h_dtype), dx, dalpha.to(alpha_dtype)


class _RowCasts(TorchDispatchMode):
    """Counts casts of fp32 tensors of one value per row ([..., 1]) to another dtype."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default:
            src, dtype = args[0], kwargs.get("dtype")
            if src.dtype == torch.float32 and src.shape[-1] == 1 and dtype not in (None, torch.float32):
                self.count += 1
        return func(*args, **kwargs)


@pytest.mark.parametrize("shape, dim", [((2, 16, 2, 4, 48), -1), ((3, 7, 192), -1), ((5, 64), 0), ((2, 3, 100), 1)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_l2_normalize_equals_the_form_before(shape, dim, dtype):
    """q and k per head (48 wide: the expanded-factor path), hidden rows, other dims; values and gradients."""
    torch.manual_seed(3)
    x = (2 * torch.randn(shape, dtype=dtype)).requires_grad_()
    grad = torch.randn(shape, dtype=dtype)
    out = l2_normalize(x, dim)
    (dx,) = torch.autograd.grad(out, x, grad)
    ref = _L2NormalizeBefore.apply(x, dim)
    (dx_ref,) = torch.autograd.grad(ref, x, grad)
    assert torch.equal(out, ref)
    assert torch.equal(dx, dx_ref), (dx.double() - dx_ref.double()).abs().max().item()
    assert dx.abs().max().item() > 1e-3


@pytest.mark.parametrize(
    "h_dtype, x_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16), (torch.float32,) * 2]
)
def test_block_update_equals_the_form_before(h_dtype, x_dtype):
    """bf16 (DeepSpeed's bf16 engine), fp32 stream with bf16 block outputs (autocast's mix), fp32."""
    torch.manual_seed(4)
    shape = (2, 16, 192)
    h = l2_normalize(torch.randn(shape, dtype=h_dtype)).detach().requires_grad_()
    x = (3 * torch.randn(shape, dtype=x_dtype)).requires_grad_()
    param = torch.randn(192, dtype=h_dtype, requires_grad=True)
    grad = torch.randn(shape, dtype=h_dtype)
    results = []
    for update in (ngpt.block_update, _BlockUpdateBefore.apply):
        out = update(h, x, (param * 0.7).abs())
        results.append((out, *torch.autograd.grad(out, (h, x, param), grad)))
    for new, old in zip(*results):
        assert new.dtype == old.dtype
        assert torch.equal(new, old), (new.double() - old.double()).abs().max().item()


@pytest.fixture
def torch_operators(monkeypatch):
    """torch's operators, not norm_kernel's C++ loops (which run by default where this machine caches them): the
    tests below count torch's casts and copies."""
    monkeypatch.setenv("NGPT_DS_NORM_KERNEL", "0")


def test_backward_casts_one_factor_fewer_per_norm(torch_operators):
    """The saving itself: the bf16 backward of Norm and of the update casts fp32 [rows, 1] tensors once fewer
    per Norm (Norm: 2 -> 1, the dot product's cast left; the update's two Norms: 4 -> 2). On the code before
    the change `assert new == old - 1 == 1` failed for Norm: `assert 2 == (2 - 1)`."""
    torch.manual_seed(5)
    x = torch.randn(2, 16, 2, 4, 48, dtype=torch.bfloat16, requires_grad=True)
    h = l2_normalize(torch.randn(2, 16, 192, dtype=torch.bfloat16)).detach().requires_grad_()
    z = torch.randn(2, 16, 192, dtype=torch.bfloat16, requires_grad=True)
    alpha = torch.full((192,), 0.05, dtype=torch.bfloat16, requires_grad=True)

    def backward_casts(out, inputs):
        with _RowCasts() as casts:
            torch.autograd.grad(out, inputs, torch.randn_like(out))
        return casts.count

    new = backward_casts(l2_normalize(x), x)
    old = backward_casts(_L2NormalizeBefore.apply(x, -1), x)
    assert new == old - 1 == 1, (new, old)
    new = backward_casts(ngpt.block_update(h, z, alpha), (h, z, alpha))
    old = backward_casts(_BlockUpdateBefore.apply(h, z, alpha), (h, z, alpha))
    assert new == old - 2 == 2, (new, old)


class _FullCopies(TorchDispatchMode):
    """Counts copies (clones) to a given shape: `_scale_rows` copying a [..., 1] factor to x's whole shape."""

    def __init__(self, shape):
        super().__init__()
        self.shape, self.count = torch.Size(shape), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.clone.default and out.shape == self.shape:
            self.count += 1
        return out


def test_qk_backward_copies_the_factor_once_not_twice(torch_operators):
    """q and k's rows (48 wide) are multiplied by their factor copied to the whole shape (`_row_factor`). The
    forward's copy is kept for the backward's last product now, so the backward copies only the dot product's
    factor: before the change `assert copies == 1` failed with `assert 2 == 1`. Values: the tests above."""
    shape = (2, 16, 2, 4, 48)
    x = torch.randn(shape, dtype=torch.bfloat16, requires_grad=True)
    out = l2_normalize(x)
    with _FullCopies(shape) as copies:
        torch.autograd.grad(out, x, torch.randn(shape, dtype=torch.bfloat16))
    assert copies.count == 1
    with _FullCopies(shape) as forward_copies:
        l2_normalize(x)
    assert forward_copies.count == 1  # the forward's own copy, the one kept


def _row_sums_before(piece: MasterPiece, sums: torch.Tensor) -> None:
    """`MasterPiece.add_squares` before, for a piece of rows (norm_dim 1)."""
    head, body, tail, first_row, first_col, body_row = piece._split()
    s = piece.slot
    if head.numel():
        sums[s + first_row] += head.dot(head)
    if body.numel():
        sums[s + body_row : s + body_row + body.shape[0]] += torch.linalg.vector_norm(body, dim=1).square()
    if tail.numel():
        sums[s + body_row + body.shape[0]] += tail.dot(tail)


@pytest.mark.parametrize("start, length", [(0, 4096 * 192), (100, 192 * 37 + 5), (192 * 3, 192 * 10), (7, 150)])
def test_hook_row_sums_equal_the_form_before(start, length):
    """Pieces of a [4096, 192] fp32 master matrix (the head's at ngpt_tiny) from several offsets, their sums added
    into a buffer that already holds other pieces' sums (as a unit's pieces share one)."""
    generator = torch.Generator().manual_seed(start + length)
    matrix = torch.randn(4096, 192, generator=generator)
    values = matrix.flatten()[start : start + length]
    slot = 5
    before = torch.rand(slot + 4096 + 3, generator=generator)
    after = before.clone()
    _row_sums_before(MasterPiece(values, start, 4096, 192, 1, slot), before)
    MasterPiece(values, start, 4096, 192, 1, slot).add_squares(after)
    assert torch.equal(after, before)
    assert not torch.equal(after, torch.zeros_like(after))
