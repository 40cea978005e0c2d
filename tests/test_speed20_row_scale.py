"""`_scale_rows` (ngpt_ds/model/layers.py): the expanded per-row multiply that l2_normalize uses on the CPU
for rows not a multiple of the vector width is the plain broadcast multiply, bit for bit, forward and backward."""

from __future__ import annotations

import pytest
import torch

from ngpt_ds.model import layers


@pytest.mark.parametrize("shape", [(2, 16, 2, 4, 48), (2, 16, 192), (3, 5, 24), (4, 64)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_scale_rows_equals_broadcast(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype)
    scale = torch.randn(*shape[:-1], 1, dtype=dtype)
    out = layers._scale_rows(x, scale)
    assert out.shape == x.shape
    assert torch.equal(out, x * scale)


@pytest.mark.parametrize("head_dim", [48, 64])
def test_l2_normalize_same_as_broadcast_form(head_dim: int, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 8, 2, 4, head_dim, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(2, 8, 2, 4, head_dim, dtype=torch.bfloat16)
    results = []
    for form in (layers._scale_rows, lambda a, s: a * s):
        monkeypatch.setattr(layers, "_scale_rows", form)
        x.grad = None
        y = layers.l2_normalize(x)
        y.backward(grad)
        results.append((y.detach().clone(), x.grad.clone()))
    (y_new, g_new), (y_old, g_old) = results
    assert torch.equal(y_new, y_old)
    assert torch.equal(g_new, g_old)
    norms = y_new.float().norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-2)
