"""NGPT_DS_NORM_KERNEL unset: norm_kernel's C++ loops run where this machine's cache already holds their build
(`launch/setup.sh` can make it with `norm_kernel.build()`), and nothing is ever compiled for it; 1 builds them on
first use, 0 keeps torch's operators (docs/benchmarks.md, "Norm's forward in C++": whether they are on by
default). The values are torch's bit for bit either way."""

from __future__ import annotations

import os
import shutil
import warnings

import pytest
import torch

from ngpt_ds.model import ngpt, norm_kernel, norm_kernel_build
from ngpt_ds.model.config import ModelConfig


@pytest.fixture(scope="module")
def built() -> None:
    """The loops in this machine's cache (built here once where missing, with the switch set)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv(norm_kernel.NORM_KERNEL_ENV, "1")
        assert norm_kernel.loops() is not None


@pytest.fixture
def fresh(monkeypatch):
    """A process that has not looked for the loops yet, and one that would fail if it compiled anything."""
    monkeypatch.setattr(norm_kernel, "_tried", False)
    monkeypatch.setattr(norm_kernel, "_loaded", None)
    monkeypatch.setattr(norm_kernel, "_absent", False)
    monkeypatch.setattr(
        norm_kernel_build, "_build", lambda *args: pytest.fail("compiled without NGPT_DS_NORM_KERNEL=1")
    )
    monkeypatch.delenv(norm_kernel.NORM_KERNEL_ENV, raising=False)


def _loss_and_grads(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    _, loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_unset_without_a_cached_build_runs_torch_and_builds_nothing(fresh, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert norm_kernel.loops() is None
        x = torch.randn(4, 16, 192, dtype=torch.bfloat16)
        assert norm_kernel.normalize(x, -1) is None
    assert list(tmp_path.iterdir()) == []
    assert norm_kernel._absent  # looked once, not at every Norm


def test_unset_with_the_cached_build_runs_the_loops(built, fresh, monkeypatch):
    """The cached build is loaded, not built again; a bf16 nGPT's loss and every gradient equal torch's."""
    assert norm_kernel.cached()
    x = torch.randn(4, 16, 192, dtype=torch.bfloat16)
    assert norm_kernel.normalize(x, -1) is not None  # the loop ran
    config = ModelConfig(n_layer=2, n_embd=96, n_head=4, seq_len=32, vocab_size=128)
    torch.manual_seed(3)
    model = ngpt.NGPT(config).to(torch.bfloat16)
    tokens = torch.randint(0, 128, (2, 33))
    loss_default, grads_default = _loss_and_grads(model, tokens)
    monkeypatch.setenv(norm_kernel.NORM_KERNEL_ENV, "0")
    loss_torch, grads_torch = _loss_and_grads(model, tokens)
    assert torch.equal(loss_default, loss_torch)
    for name in grads_torch:
        assert torch.equal(grads_default[name], grads_torch[name]), name


def test_zero_keeps_torch_even_with_the_cached_build(built, fresh, monkeypatch):
    monkeypatch.setenv(norm_kernel.NORM_KERNEL_ENV, "0")
    monkeypatch.setattr(norm_kernel, "loops", lambda: pytest.fail("loaded with NGPT_DS_NORM_KERNEL=0"))
    x = torch.randn(4, 16, 192, dtype=torch.bfloat16, requires_grad=True)
    assert norm_kernel.normalize(x.detach(), -1) is None
    ngpt.l2_normalize(x).sum().backward()


def test_build_finds_the_cached_build_and_the_forward_order(built, fresh):
    """`build()`, what setup.sh runs: True where the loops load and their forward matches torch's here."""
    assert norm_kernel.build() is True


def test_build_without_a_compiler_warns_and_says_false(fresh, monkeypatch):
    """setup.sh's build on a machine without a C++ compiler: one warning, False, no traceback; the switch as it was."""

    def no_compiler() -> None:
        raise RuntimeError("Error building extension 'ngpt_ds_norm': c++: command not found")

    monkeypatch.setattr(norm_kernel_build, "load", no_compiler)
    with pytest.warns(RuntimeWarning, match=r"c\+\+: command not found\); torch's operators run") as caught:
        assert norm_kernel.build() is False
    assert len(caught) == 1
    assert norm_kernel.NORM_KERNEL_ENV not in os.environ


def test_loading_a_cached_build_writes_nothing_into_the_cache(built, fresh, monkeypatch, tmp_path):
    """Fault (session 39): with the loops on by default, every process that loaded a cached build opened a lock file
    for writing in its cache folder first, so a read-only cache (a home shared read-only, an image's layer) made
    every trainer process warn 'could not be built or loaded (PermissionError ...)' and run torch's operators.
    A library in place is whole (one rename puts it there): loading it takes no lock and writes nothing."""
    name, folder = norm_kernel_build._place()
    copy = tmp_path / name
    copy.mkdir()
    shutil.copyfile(folder / f"{name}.so", copy / f"{name}.so")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops = norm_kernel.loops()
    assert ops is not None and hasattr(ops, "normalize")
    # old code: [<name>.so, 'lock']
    assert sorted(p.name for p in copy.iterdir()) == [f"{name}.so"]
