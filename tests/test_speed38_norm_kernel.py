"""Norm's backward and the eq. 10-11 update's through `ngpt_ds.model.norm_kernel`'s C++ loops (NGPT_DS_NORM_KERNEL=1)
give the values of torch's operators bit for bit, and the forward is untouched (docs/benchmarks.md, "Norm's backward in C++"):
Norm alone (fp32 and bf16, rows of 192, q and k's rows of 48 with the factor copied to their whole shape, and
odd sizes), the eq. 10-11 update, and a whole bf16 and fp32 nGPT's loss and every gradient. The loops are built
once per machine (a C++ compiler; about 30 s of CPU time the first time)."""

from __future__ import annotations

import warnings

import pytest
import torch

from ngpt_ds.model import layers, ngpt, norm_kernel, norm_kernel_build
from ngpt_ds.model.config import ModelConfig
from ngpt_ds.model.layers import _row_factor, l2_normalize

SHAPES = [(8, 16, 192), (2, 8, 2, 4, 48), (3, 7, 64), (5, 33), (1, 1, 1)]
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(scope="module")
def built() -> None:
    """The loops, built or loaded from this machine's cache; a failed build fails here, not silently later."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv(norm_kernel.NORM_KERNEL_ENV, "1")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert norm_kernel.loops() is not None


def _with_kernel(monkeypatch: pytest.MonkeyPatch, on: bool) -> None:
    # off is 0, not unset: unset runs the loops where this machine's cache holds them (test_speed39_default_loops)
    monkeypatch.setenv(norm_kernel.NORM_KERNEL_ENV, "1" if on else "0")


def _norm_pass(x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_()
    y = l2_normalize(x)
    y.backward(grad)
    assert x.grad is not None
    return y.detach(), x.grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_norm_forward_and_backward_equal_torch_operators(built, monkeypatch, shape, dtype):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float32).mul_(3).to(dtype)
    grad = torch.randn(shape, dtype=torch.float32).to(dtype)
    _with_kernel(monkeypatch, False)
    y_torch, dx_torch = _norm_pass(x, grad)
    _with_kernel(monkeypatch, True)
    y_loops, dx_loops = _norm_pass(x, grad)
    assert torch.equal(y_loops, y_torch)
    assert torch.equal(dx_loops, dx_torch)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES[:4])
def test_the_loops_run_where_the_model_calls_them(built, monkeypatch, shape, dtype):
    """Not a silent fall-back to torch's operators: for Norm's own tensors (factor per row, or copied to the whole
    shape for rows not a multiple of the vector width) the loops return the tangent rows; for what they do not
    cover (no factor, float64, another dim, a transposed gradient) they return None."""
    _with_kernel(monkeypatch, True)
    torch.manual_seed(1)
    x = torch.randn(shape, dtype=dtype)
    grad = torch.randn(shape, dtype=dtype)
    inv_norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).reciprocal_()
    factor = _row_factor(x, inv_norm.to(dtype))
    y = x * factor
    looped = norm_kernel.tangent_rows(grad, y, inv_norm, -1, factor)
    assert looped is not None
    _with_kernel(monkeypatch, False)
    assert torch.equal(looped, layers.tangent_rows(grad, y, inv_norm, -1, factor))
    _with_kernel(monkeypatch, True)
    assert norm_kernel.tangent_rows(grad, y, inv_norm, -1, None) is None
    assert norm_kernel.tangent_rows(grad, y, inv_norm, 0, factor) is None
    assert norm_kernel.tangent_rows(grad.transpose(0, 1), y.transpose(0, 1), inv_norm, -1, factor) is None
    wide = x.double()
    assert norm_kernel.tangent_rows(wide, wide, inv_norm.double(), -1, inv_norm.double()) is None


@pytest.mark.parametrize(
    ("stream", "dtype"),
    [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16)],
)
def test_block_update_equals_torch_operators(built, monkeypatch, stream, dtype):
    """Eq. 10-11's update (`ngpt._BlockUpdate`), whose backward runs Norm's twice and, between them, its own
    products in one loop (`norm_kernel.update_parts`); with an fp32 stream and bf16 block outputs (autocast's
    dtypes) the outer Norm is fp32 and the inner one bf16."""
    torch.manual_seed(2)
    h0 = torch.nn.functional.normalize(torch.randn(4, 16, 192), dim=-1).to(stream)
    x0 = torch.randn(4, 16, 192).to(dtype)
    alpha0 = torch.rand(192).to(stream)
    grad = torch.randn(4, 16, 192).to(torch.promote_types(stream, dtype))
    results = []
    for on in (False, True):
        _with_kernel(monkeypatch, on)
        h, x, alpha = (t.detach().requires_grad_() for t in (h0, x0, alpha0))
        out = ngpt.block_update(h, x, alpha)
        out.backward(grad)
        results.append((out.detach(), h.grad, x.grad, alpha.grad))
    for torch_value, looped_value in zip(*results):
        assert torch.equal(looped_value, torch_value)
    _with_kernel(monkeypatch, True)
    wide = grad.dtype  # the update's dtype: h, alpha and dm in it, target in the block output's
    dm, h, alpha = torch.randn(4, 16, 192).to(wide), h0.to(wide), alpha0.to(wide)
    target = torch.randn(4, 16, 192).to(dtype)
    parts = norm_kernel.update_parts(dm, target, h, alpha)
    if stream != dtype:  # the update's loop takes one dtype throughout; torch's operators run the mixed case
        assert parts is None
        return
    assert parts is not None  # the update's own loop ran, not torch's operators
    dh, terms, dtarget = parts
    assert torch.equal(dh, dm * (1 - alpha))
    assert torch.equal(terms, (target - h).mul_(dm))
    assert torch.equal(dtarget, dm * alpha)


@pytest.mark.parametrize("dtype", DTYPES)
def test_whole_model_loss_and_gradients_equal(built, monkeypatch, dtype):
    """A 2-layer nGPT (head_dim 24: q and k's factor copied to the whole shape), loss and every gradient."""
    config = ModelConfig(n_layer=2, n_embd=96, n_head=4, seq_len=32, vocab_size=128)
    torch.manual_seed(3)
    model = ngpt.NGPT(config).to(dtype)
    tokens = torch.randint(0, 128, (2, 33))
    results = []
    for on in (False, True):
        _with_kernel(monkeypatch, on)
        model.zero_grad(set_to_none=True)
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_torch, grads_torch), (loss_looped, grads_looped) = results
    assert torch.equal(loss_looped, loss_torch)
    assert grads_looped.keys() == grads_torch.keys()
    for name in grads_torch:
        assert torch.equal(grads_looped[name], grads_torch[name]), name


def test_a_failed_build_warns_once_and_torch_runs(monkeypatch):
    """No compiler (or any failed build): one warning naming the switch, then torch's operators, the same values."""
    monkeypatch.setattr(norm_kernel, "_tried", False)
    monkeypatch.setattr(norm_kernel, "_loaded", None)

    def no_compiler() -> None:
        raise RuntimeError("Error building extension 'ngpt_ds_norm': c++: command not found")

    monkeypatch.setattr(norm_kernel_build, "load", no_compiler)
    _with_kernel(monkeypatch, True)
    x = torch.randn(4, 192, dtype=torch.bfloat16)
    grad = torch.randn(4, 192, dtype=torch.bfloat16)
    with pytest.warns(RuntimeWarning, match=r"NGPT_DS_NORM_KERNEL=1: .*c\+\+: command not found\); torch's") as caught:
        _, dx = _norm_pass(x, grad)
        _norm_pass(x, grad)
    assert len(caught) == 1
    _with_kernel(monkeypatch, False)
    assert torch.equal(dx, _norm_pass(x, grad)[1])


def test_off_with_zero(monkeypatch):
    """With NGPT_DS_NORM_KERNEL=0 nothing is built or loaded (unset: tests/test_speed39_default_loops.py)."""
    _with_kernel(monkeypatch, False)
    monkeypatch.setattr(norm_kernel, "loops", lambda: pytest.fail("built without NGPT_DS_NORM_KERNEL=1"))
    x = torch.randn(4, 192, dtype=torch.bfloat16)
    _norm_pass(x, torch.randn(4, 192, dtype=torch.bfloat16))
