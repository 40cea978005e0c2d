"""The training loss (ngpt_ds/model/loss.py) computes F.cross_entropy's function: value and gradient."""

import pytest
import torch
import torch.nn.functional as F

from ngpt_ds.model import ModelConfig, build_model
from ngpt_ds.model.loss import cross_entropy


def reference(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets, ignore_index=-1)


def value_and_grad(loss_fn, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.detach().requires_grad_()
    loss = loss_fn(logits, targets)
    (3.0 * loss).backward()  # an upstream gradient other than 1
    return loss.detach(), logits.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_cross_entropy_matches_torch_with_ignored_targets(dtype):
    torch.manual_seed(0)
    logits = (4 * torch.randn(37, 101, dtype=torch.float64)).to(dtype)
    targets = torch.randint(0, 101, (37,))
    targets[::5] = -1
    loss, grad = value_and_grad(cross_entropy, logits, targets)
    want_loss, want_grad = value_and_grad(reference, logits, targets)
    assert loss.dtype == want_loss.dtype == torch.promote_types(dtype, torch.float32)
    assert grad.dtype == want_grad.dtype == dtype
    tight = {torch.float64: 1e-13, torch.float32: 1e-6, torch.bfloat16: 1e-6}[dtype]
    assert torch.allclose(loss, want_loss, rtol=tight, atol=0)
    # bf16 gradients are rounded from fp32 ones that may differ in the last fp32 bit: one bf16 step at most
    grad_tol = {torch.float64: 1e-15, torch.float32: 1e-8, torch.bfloat16: 2**-8 * want_grad.abs().max().item()}[dtype]
    assert torch.allclose(grad.double(), want_grad.double(), rtol=0, atol=grad_tol)
    assert grad[::5].abs().max() == 0  # ignored rows


def test_cross_entropy_of_only_ignored_targets_is_nan_as_in_torch():
    logits = torch.randn(4, 7)
    targets = torch.full((4,), -1)
    assert torch.isnan(cross_entropy(logits, targets)) and torch.isnan(reference(logits, targets))


def test_the_model_loss_is_this_cross_entropy():
    config = ModelConfig(arch="ngpt", n_layer=1, n_embd=32, n_head=2, seq_len=16, vocab_size=64).validate()
    model = build_model(config).double()
    tokens = torch.randint(0, 64, (2, 17))
    logits, loss = model(tokens[:, :-1], tokens[:, 1:])
    assert torch.allclose(loss, reference(logits.flatten(0, 1), tokens[:, 1:].flatten()), rtol=1e-14)
    assert loss.grad_fn.name().endswith("_CrossEntropyBackward")


def test_the_loss_takes_few_large_blocks_on_an_accelerator():
    """The CPU's cache-sized blocks (4 MiB) on a GPU were 512 blocks of a few kernel launches each per
    micro-batch of 16k tokens at a 32k vocabulary, each block shorter than its launches. Blocks are
    256 MiB there (8 blocks), still an eighth of the fp32 copy of the whole logits the loss never makes."""
    from ngpt_ds.model.loss import _row_blocks

    rows, vocabulary = 16 * 1024, 32 * 1024
    assert len(_row_blocks(rows, vocabulary)) == len(_row_blocks(rows, vocabulary, "cpu")) == 512
    blocks = _row_blocks(rows, vocabulary, "cuda")
    assert len(blocks) == 8 and {b.stop - b.start for b in blocks} == {2048}
    assert blocks[-1].stop == rows and 2048 * vocabulary * 4 == 256 * 2**20


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_cross_entropy_over_many_row_blocks_matches_torch(dtype, monkeypatch):
    """Blocks of 5 rows over 37 (the last one 2 rows): the value and gradient of one block."""
    import ngpt_ds.model.loss as loss_module

    torch.manual_seed(1)
    logits = (4 * torch.randn(37, 101, dtype=torch.float64)).to(dtype)
    targets = torch.randint(0, 101, (37,))
    targets[3::4] = -1
    whole = value_and_grad(cross_entropy, logits, targets)
    monkeypatch.setattr(loss_module, "BLOCK_ELEMENTS", 5 * 101)
    assert len(loss_module._row_blocks(37, 101)) == 8
    blocked = value_and_grad(cross_entropy, logits, targets)
    want_loss, want_grad = value_and_grad(reference, logits, targets)
    assert torch.equal(blocked[1], whole[1])  # the gradient is computed row by row: blocks change nothing
    tight = {torch.float64: 1e-13, torch.float32: 1e-6, torch.bfloat16: 1e-6}[dtype]
    assert torch.allclose(blocked[0], want_loss, rtol=tight, atol=0)
    grad_tol = {torch.float64: 1e-15, torch.float32: 1e-8, torch.bfloat16: 2**-8 * want_grad.abs().max().item()}[dtype]
    assert torch.allclose(blocked[1].double(), want_grad.double(), rtol=0, atol=grad_tol)


def test_cross_entropy_keeps_no_fp32_copy_of_bf16_logits_for_the_backward():
    """The fault: the loss used to keep an fp32 [tokens, vocabulary] tensor from forward to backward
    (250 MiB at 2048 tokens and a 32k vocabulary). Now it keeps the bf16 logits, which the caller holds
    anyway, and per-token vectors."""
    logits = torch.randn(64, 1000).bfloat16().requires_grad_()
    targets = torch.randint(0, 1000, (64,))
    loss = cross_entropy(logits, targets)
    saved = loss.grad_fn.saved_tensors
    large = [t for t in saved if t.numel() >= logits.numel()]
    assert len(large) == 1 and large[0].dtype == torch.bfloat16 and large[0].data_ptr() == logits.data_ptr()
    assert max(t.numel() for t in saved if t.data_ptr() != logits.data_ptr()) <= 64
