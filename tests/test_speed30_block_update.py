"""`block_update` (ngpt_ds/model/ngpt.py): nGPT's eq. 10-11 update Norm(lerp(h, Norm(x), alpha)) through
`_BlockUpdate`, one autograd function whose backward reuses its temporaries in place, gives the plain form's
(`sphere_step(h, l2_normalize(x), alpha)`, autograd through two normalizations and lerp) values and gradients
bit for bit, alone and in whole nGPT models; and `l2_normalize`'s backward through `tangent_rows` (in place)
gives the values of the backward it replaced (docs/benchmarks.md, "What was changed, and what it gave")."""

from __future__ import annotations

import pytest
import torch
from grad_steps import assert_same_step, loss_and_grads

from ngpt_ds.model import ModelConfig, layers, ngpt
from ngpt_ds.model.factory import build_model
from ngpt_ds.model.layers import _scale_rows, l2_normalize


class _ReferenceL2Normalize(torch.autograd.Function):
    """`_L2Normalize` as it was before tangent_rows: its backward allocates every temporary anew."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:
        accumulate = torch.promote_types(x.dtype, torch.float32)
        inv_norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=accumulate).reciprocal_()
        y = _scale_rows(x, inv_norm.to(x.dtype))
        ctx.dim = dim
        ctx.save_for_backward(y, inv_norm)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        y, inv_norm = ctx.saved_tensors
        dot = (grad * y).sum(dim=ctx.dim, keepdim=True, dtype=inv_norm.dtype)
        return _scale_rows(grad - _scale_rows(y, dot.to(grad.dtype)), inv_norm.to(grad.dtype)), None


def _plain_form(h: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The update as the block ran it before: autograd through lerp and the normalization it replaced."""
    dtype = torch.promote_types(h.dtype, x.dtype)
    target = _ReferenceL2Normalize.apply(x, -1)
    return _ReferenceL2Normalize.apply(torch.lerp(h.to(dtype), target.to(dtype), alpha.to(dtype)), -1)


@pytest.mark.parametrize("shape, dim", [((2, 16, 2, 4, 48), -1), ((3, 7, 192), -1), ((5, 64), 0), ((2, 3, 100), 1)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_l2_normalize_backward_equals_the_replaced_one(shape: tuple[int, ...], dim: int, dtype: torch.dtype) -> None:
    """q and k per head (48 wide: the expanded-factor path), hidden rows, and other dims."""
    torch.manual_seed(1)
    x = (2 * torch.randn(shape, dtype=dtype)).requires_grad_()
    grad = torch.randn(shape, dtype=dtype)
    out = l2_normalize(x, dim)
    (dx,) = torch.autograd.grad(out, x, grad)
    ref = _ReferenceL2Normalize.apply(x, dim)
    (dx_ref,) = torch.autograd.grad(ref, x, grad)
    assert torch.equal(out, ref)
    assert torch.equal(dx, dx_ref), (dx.double() - dx_ref.double()).abs().max().item()
    assert dx.abs().max().item() > 1e-3


def test_l2_normalize_double_backward_still_works() -> None:
    """create_graph: the backward keeps its differentiable form (tangent_rows works in place)."""
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(4, 6, dtype=torch.float64)
    (dx,) = torch.autograd.grad(l2_normalize(x), x, grad, create_graph=True)
    (ddx,) = torch.autograd.grad(dx.square().sum(), x)
    (dx_ref,) = torch.autograd.grad(_ReferenceL2Normalize.apply(x, -1), x, grad, create_graph=True)
    (ddx_ref,) = torch.autograd.grad(dx_ref.square().sum(), x)
    assert torch.equal(dx, dx_ref)
    assert torch.equal(ddx, ddx_ref)


def _pass(form, h: torch.Tensor, x: torch.Tensor, param: torch.Tensor, grad: torch.Tensor):
    out = form(h, x, (param * 0.7).abs())
    return (out, *torch.autograd.grad(out, (h, x, param), grad))


@pytest.mark.parametrize("shape", [(2, 16, 192), (3, 5, 48), (4, 100)])
@pytest.mark.parametrize(
    "h_dtype, x_dtype",
    [
        (torch.bfloat16, torch.bfloat16),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
        (torch.float32, torch.bfloat16),  # autocast: fp32 residual stream, bf16 block output
    ],
)
def test_block_update_equals_plain_form(shape: tuple[int, ...], h_dtype: torch.dtype, x_dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    h = l2_normalize(torch.randn(shape, dtype=torch.float64)).to(h_dtype).requires_grad_()
    x = (3 * torch.randn(shape, dtype=x_dtype)).requires_grad_()
    param = (0.05 + 0.1 * torch.rand(shape[-1], dtype=x_dtype)).requires_grad_()
    grad = torch.randn(shape, dtype=torch.promote_types(h_dtype, x_dtype))
    out = ngpt.block_update(h, x, (param * 0.7).abs())
    assert type(out.grad_fn).__name__ == "_BlockUpdateBackward"  # the function's path, not the fallback
    new = _pass(ngpt.block_update, h, x, param, grad)
    old = _pass(_plain_form, h, x, param, grad)
    for name, a, b in zip(("value", "dh", "dx", "dalpha"), new, old):
        assert a.dtype == b.dtype, name
        assert torch.equal(a, b), (name, (a.double() - b.double()).abs().max().item())
    for name, g in zip(("dh", "dx", "dalpha"), new[1:]):
        assert g.abs().max().item() > 1e-3, name  # not trivially zero


def test_block_update_without_grad_is_the_plain_form() -> None:
    h = l2_normalize(torch.randn(2, 8, 64)).requires_grad_()
    x = torch.randn(2, 8, 64)
    alpha = torch.full((64,), 0.05)
    with torch.no_grad():
        out = ngpt.block_update(h, x, alpha)
    assert out.grad_fn is None
    assert torch.equal(out, _plain_form(h.detach(), x, alpha))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_model_loss_and_gradients_same_as_plain_update(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    config = ModelConfig(arch="ngpt", vocab_size=97, n_layer=2, n_embd=48, n_head=2, seq_len=32).validate()
    torch.manual_seed(5)
    model = build_model(config).to(dtype)
    tokens = torch.randint(0, 97, (3, 32))
    targets = torch.randint(0, 97, (3, 32))
    results = []
    for update, norm in ((ngpt.block_update, layers._L2Normalize), (_plain_form, _ReferenceL2Normalize)):
        monkeypatch.setattr(ngpt, "block_update", update)
        monkeypatch.setattr(layers, "_L2Normalize", norm)  # q/k and the embedding's Norm
        results.append(loss_and_grads(model, lambda: model(tokens, targets)[1]))
    assert_same_step(*results)
    alpha = next(g for n, g in results[0][1].items() if "attn_alpha" in n)
    assert alpha.abs().max().item() > 0  # the update's backward reached alpha


def test_model_under_autocast_same_as_plain_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 weights under bf16 autocast: the residual stream stays fp32, block outputs are bf16."""
    config = ModelConfig(arch="ngpt", vocab_size=97, n_layer=2, n_embd=64, n_head=2, seq_len=16).validate()
    torch.manual_seed(7)
    model = build_model(config)
    tokens = torch.randint(0, 97, (2, 16))
    targets = torch.randint(0, 97, (2, 16))
    results = []
    for update, norm in ((ngpt.block_update, layers._L2Normalize), (_plain_form, _ReferenceL2Normalize)):
        monkeypatch.setattr(ngpt, "block_update", update)
        monkeypatch.setattr(layers, "_L2Normalize", norm)
        results.append(loss_and_grads(model, lambda: model(tokens, targets)[1], autocast=torch.bfloat16))
    assert_same_step(*results)
