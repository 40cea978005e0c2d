"""Norm's forward and the eq. 10-11 update's forward through `ngpt_ds.model.norm_kernel`'s C++ loops
(NGPT_DS_NORM_KERNEL=1) give torch's values bit for bit: y, 1 / ||x|| and its cast, target = Norm(x) and
y = Norm(lerp(h, target, alpha)), in bf16 and fp32, at one, two and three threads, with alpha on both of lerp's
branches (|alpha| < 0.5 and not). The loops sum the squares in the order of torch's vectorized 2-norm, whose lanes
`forward_lanes` finds by comparison; where no order matches, one warning and torch's operators run the forward
(docs/benchmarks.md, "Norm's forward in C++")."""

from __future__ import annotations

import warnings

import pytest
import torch

from ngpt_ds.model import layers, ngpt, norm_kernel

SHAPES = [(8, 32, 192), (2, 16, 2, 4, 48), (3, 7, 64), (4, 8)]
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(scope="module")
def ops():
    """The loops, built or loaded from this machine's cache, and their lanes found: a failure fails here."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv(norm_kernel.NORM_KERNEL_ENV, "1")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loaded = norm_kernel.loops()
            assert loaded is not None
            assert norm_kernel.forward_lanes(loaded) in (8, 16)
    return loaded


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _torch_norm(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    inv = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).reciprocal_()
    factor = inv.to(x.dtype)
    return x * factor, inv, factor


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_norm_forward_equals_torch(ops, monkeypatch, threads, shape, dtype, count):
    monkeypatch.setenv(norm_kernel.NORM_KERNEL_ENV, "1")
    threads(count)
    torch.manual_seed(0)
    for scale in (1e-3, 1.0, 3.0, 1e3):
        x = torch.randn(shape).mul_(scale).to(dtype)
        looped = norm_kernel.normalize(x, -1)
        assert looped is not None  # the loop ran, not torch's operators
        y, inv, factor = looped
        want_y, want_inv, want_factor = _torch_norm(x)
        assert factor.shape == (*shape[:-1], 1)  # per row, never copied to x's shape
        assert torch.equal(y, want_y)
        assert torch.equal(inv, want_inv)
        assert torch.equal(factor, want_factor)


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 32, 192), (3, 5, 64)])
def test_update_forward_equals_torch(ops, monkeypatch, threads, shape, dtype, count):
    monkeypatch.setenv(norm_kernel.NORM_KERNEL_ENV, "1")
    threads(count)
    torch.manual_seed(1)
    n = shape[-1]
    h = torch.nn.functional.normalize(torch.randn(shape), dim=-1).to(dtype)
    x = torch.randn(shape).to(dtype)
    for alpha in (torch.full((n,), 0.05), torch.rand(n), torch.rand(n) * 4 - 2):
        alpha = alpha.to(dtype)
        looped = norm_kernel.step(h, x, alpha)
        assert looped is not None
        target, y, inv_x, factor_x = *looped[:3], looped[4]
        want_target, want_inv_x, want_factor_x = _torch_norm(x)
        want_y = _torch_norm(torch.lerp(h, want_target, alpha))[0]
        assert torch.equal(target, want_target)
        assert torch.equal(inv_x, want_inv_x)
        assert torch.equal(factor_x, want_factor_x)
        assert torch.equal(y, want_y)
        assert torch.equal(y, ngpt.sphere_step(h, layers.l2_normalize(x), alpha))


def test_where_the_forward_loops_do_not_apply(ops, monkeypatch):
    """torch's operators run: rows not a multiple of the lanes, another dim, a transposed tensor, float64,
    mixed dtypes in the update (autocast's fp32 stream), the switch off."""
    monkeypatch.setenv(norm_kernel.NORM_KERNEL_ENV, "1")
    x = torch.randn(4, 33)
    assert norm_kernel.normalize(x, -1) is None
    assert norm_kernel.normalize(torch.randn(4, 64), 0) is None
    assert norm_kernel.normalize(torch.randn(64, 4).t(), -1) is None
    assert norm_kernel.normalize(torch.randn(4, 64, dtype=torch.float64), -1) is None
    h, alpha = torch.randn(4, 64), torch.rand(64)
    assert norm_kernel.step(h, torch.randn(4, 64, dtype=torch.bfloat16), alpha) is None
    assert norm_kernel.step(h, torch.randn(4, 64), alpha.view(1, 64).expand(4, 64)) is None
    monkeypatch.setenv(norm_kernel.NORM_KERNEL_ENV, "0")
    assert norm_kernel.normalize(torch.randn(4, 64), -1) is None
    assert norm_kernel.step(h, torch.randn(4, 64), alpha) is None


def test_an_order_not_matched_warns_once_and_torch_runs_the_forward(ops, monkeypatch):
    """A CPU whose torch sums the squares in another order: one warning, then torch's forward, the same values;
    the backward's loops still run."""
    monkeypatch.setenv(norm_kernel.NORM_KERNEL_ENV, "1")
    monkeypatch.setattr(norm_kernel, "_lanes", {})
    monkeypatch.setattr(norm_kernel, "_forward_matches", lambda ops, lanes: False)
    x = torch.randn(4, 16, 192, dtype=torch.bfloat16)
    with pytest.warns(RuntimeWarning, match=r"NGPT_DS_NORM_KERNEL: the C\+\+ Norm forward does not give") as caught:
        assert norm_kernel.normalize(x, -1) is None
        assert norm_kernel.step(x, x, torch.rand(192).to(torch.bfloat16)) is None
        y = layers.l2_normalize(x)
    assert len(caught) == 1
    assert torch.equal(y, _torch_norm(x)[0])


def test_whole_model_under_autocast_equals_torch(ops, monkeypatch):
    """fp32 weights under CPU bf16 autocast (the stream fp32, the block outputs and q, k bf16): the loops take the
    bf16 Norms, torch the mixed updates; the loss and every gradient are torch's."""
    from ngpt_ds.model.config import ModelConfig

    config = ModelConfig(n_layer=2, n_embd=96, n_head=4, seq_len=32, vocab_size=128)
    torch.manual_seed(4)
    model = ngpt.NGPT(config)
    tokens = torch.randint(0, 128, (2, 33))
    results = []
    for switch in ("0", "1"):
        monkeypatch.setenv(norm_kernel.NORM_KERNEL_ENV, switch)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_torch, grads_torch), (loss_looped, grads_looped) = results
    assert torch.equal(loss_looped, loss_torch)
    for name in grads_torch:
        assert torch.equal(grads_looped[name], grads_torch[name]), name
