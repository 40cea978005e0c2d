"""`gated_silu` (ngpt_ds/model/layers.py): SwiGLU's gate through `_GatedSiLU`, whose backward writes du and dv
into one tensor instead of chunk's backward cat, gives autograd's `u * F.silu(v)` values and gradients bit for
bit, alone and in whole nGPT and GPT models (docs/benchmarks.md, "What was changed, and what it gave")."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from grad_steps import assert_same_step, loss_and_grads

from ngpt_ds.model import ModelConfig, blocks, layers
from ngpt_ds.model.factory import build_model


def _autograd_form(y: torch.Tensor) -> torch.Tensor:
    u, v = y.chunk(2, dim=-1)
    return u * F.silu(v)


@pytest.mark.parametrize("shape", [(2, 16, 2 * 768), (3, 5, 2 * 24), (4, 2 * 100)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_gated_silu_equals_autograd_form(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    y = (3 * torch.randn(shape, dtype=dtype)).requires_grad_()
    grad = torch.randn(*shape[:-1], shape[-1] // 2, dtype=dtype)
    out = layers.gated_silu(y)
    assert type(out.grad_fn).__name__ == "_GatedSiLUBackward"  # the function's path, not the fallback
    (dy,) = torch.autograd.grad(out, y, grad)
    ref = _autograd_form(y)
    (dy_ref,) = torch.autograd.grad(ref, y, grad)
    assert torch.equal(out, ref)
    assert torch.equal(dy, dy_ref)
    assert dy.abs().max().item() > 0.1  # the gradient is not trivially zero


def test_gated_silu_without_grad_is_the_plain_form() -> None:
    y = torch.randn(2, 8, 64, requires_grad=True)
    with torch.no_grad():
        out = layers.gated_silu(y)
    assert out.grad_fn is None
    assert torch.equal(out, _autograd_form(y.detach()))


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_model_loss_and_gradients_same_as_autograd_gate(
    arch: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ModelConfig(arch=arch, vocab_size=97, n_layer=2, n_embd=48, n_head=2, seq_len=32).validate()
    torch.manual_seed(5)
    model = build_model(config).to(dtype)
    tokens = torch.randint(0, 97, (3, 32))
    targets = torch.randint(0, 97, (3, 32))
    results = []
    for gate in (layers.gated_silu, _autograd_form):
        monkeypatch.setattr(blocks, "gated_silu", gate)
        results.append(loss_and_grads(model, lambda: model(tokens, targets)[1]))
    assert_same_step(*results)
    up = next(g for n, g in results[0][1].items() if "up_gate" in n)
    assert up.abs().max().item() > 0  # the gate's backward reached the up projection
