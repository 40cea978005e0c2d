"""Compiled CPU attention up to WRITTEN_ATTENTION_MAX_POSITIONS runs as `written_attention` (plain operations that
Inductor fuses) instead of SDPA's flash kernel (docs/benchmarks.md, "What was changed, and what it gave").

It is the same function: in fp32 it equals SDPA within 1e-6 of the largest value compared, outputs and all
three input gradients; in bf16 the two differ by rounding only (the written form rounds the scores q k^T to
bf16, the flash kernel keeps them in fp32), within 2^-6 of the largest value, and the written form is no
further from an fp64 reference than that. Eager attention stays SDPA, bit for bit; compiled, the model's loss
and gradients equal eager's within 1e-6 in fp32 on either side of the threshold.
"""

import pytest
import torch
import torch.nn.functional as F
from compiled_model import eager_and_compiled

from ngpt_ds.model import blocks
from ngpt_ds.model.blocks import CausalSelfAttention, written_attention
from ngpt_ds.model.config import ModelConfig

FLASH = "_scaled_dot_product_flash_attention_for_cpu"


def sdpa(q, k, v, scale):
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale).transpose(1, 2)


def model_like_inputs(head_dim, *, on_sphere, positions=128, seed=0):
    """q, k, v, g in fp64, [2, positions, 4 heads, head_dim], at the scales attention sees in the model: nGPT's q
    and k unit vectors per head (s_qk at its init 1), GPT's q and k and every v of entries about 1/sqrt(head_dim)
    (unit rows of the residual stream through unit weight rows); the upstream gradient that of a mean loss."""
    gen = torch.Generator().manual_seed(seed)
    shape = (2, positions, 4, head_dim)
    q, k, v, g = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(4))
    if on_sphere:
        q, k = (x / x.norm(dim=-1, keepdim=True) for x in (q, k))
    else:
        q, k = q / head_dim**0.5, k / head_dim**0.5
    return q, k, v / head_dim**0.5, g / g.numel() ** 0.5


def output_and_grads(attention, inputs, dtype, scale):
    q, k, v, g = inputs
    leaves = [x.to(dtype).requires_grad_() for x in (q, k, v)]
    y = attention(*leaves, scale)
    y.backward(g.to(dtype))
    return [y.detach().double()] + [x.grad.double() for x in leaves]


def largest_relative_difference(got, want):
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(got, want))


CASES = [(48, True), (64, True), (48, False)]


@pytest.mark.parametrize("head_dim,on_sphere", CASES)
def test_written_attention_equals_sdpa_in_fp32(head_dim, on_sphere):
    scale = head_dim**0.5 if on_sphere else head_dim**-0.5
    inputs = model_like_inputs(head_dim, on_sphere=on_sphere)
    written = output_and_grads(written_attention, inputs, torch.float32, scale)
    flash = output_and_grads(sdpa, inputs, torch.float32, scale)
    assert largest_relative_difference(written, flash) <= 1e-6


@pytest.mark.parametrize("head_dim,on_sphere", CASES)
def test_written_attention_equals_sdpa_in_bf16_within_rounding(head_dim, on_sphere):
    scale = head_dim**0.5 if on_sphere else head_dim**-0.5
    inputs = model_like_inputs(head_dim, on_sphere=on_sphere)
    written = output_and_grads(written_attention, inputs, torch.bfloat16, scale)
    flash = output_and_grads(sdpa, inputs, torch.bfloat16, scale)
    exact = output_and_grads(sdpa, inputs, torch.float64, scale)
    tolerance = 2**-6  # two bf16 epsilons (2^-7) of the largest value compared
    assert 0 < largest_relative_difference(written, flash) <= tolerance  # bf16 rounding, not the same values
    assert largest_relative_difference(written, exact) <= tolerance
    assert largest_relative_difference(flash, exact) <= tolerance


def test_eager_attention_stays_sdpa_bit_for_bit():
    """Below the threshold, eager steps keep the flash kernel: the eager model is unchanged."""
    config = ModelConfig(arch="ngpt", vocab_size=64, n_layer=1, n_embd=96, n_head=2, seq_len=32)
    attention = CausalSelfAttention(config, on_sphere=True, qkv_std=0.02, out_std=0.02).to(torch.bfloat16)
    q, k, v, _ = model_like_inputs(48, on_sphere=True, positions=32)
    q, k, v = (x.to(torch.bfloat16) for x in (q, k, v))
    assert 32 <= blocks.WRITTEN_ATTENTION_MAX_POSITIONS
    assert torch.equal(attention.attend(q, k, v), sdpa(q, k, v, attention.softmax_scale))


@pytest.mark.parametrize("threshold,written", [(None, True), (8, False)])
def test_compiled_model_attends_written_up_to_the_threshold_and_equals_eager(monkeypatch, threshold, written):
    """16 positions: at the constant's value (256) the compiled graphs hold no flash kernel; with the threshold
    below 16 they call it, forward and backward. Either way loss and gradients equal eager's within 1e-6."""
    if threshold is not None:
        monkeypatch.setattr(blocks, "WRITTEN_ATTENTION_MAX_POSITIONS", threshold)
    torch._dynamo.reset()
    (eager_loss, eager_grads), (compiled_loss, compiled_grads), code = eager_and_compiled("ngpt")
    assert len(code) == 2  # the forward and the backward graph
    forward, backward = code
    assert (FLASH in forward, FLASH + "_backward" in backward) == (not written, not written)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(compiled_grads, eager_grads, rtol=0, atol=1e-6)
    torch._dynamo.reset()


def test_bench_flash_attention_mode_sets_the_threshold_to_zero_only_while_it_runs():
    """bench/mfu.py and bench/peer_step.py --flash-compiled time compiled steps with the flash kernel at every
    context through engines.with_flash_attention: 0 inside the step, the constant back after it, even on error."""
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))
    from engines import with_flash_attention

    constant = blocks.WRITTEN_ATTENTION_MAX_POSITIONS
    seen = []
    assert with_flash_attention(lambda x: seen.append(blocks.WRITTEN_ATTENTION_MAX_POSITIONS) or x)(7) == 7
    assert seen == [0] and blocks.WRITTEN_ATTENTION_MAX_POSITIONS == constant

    def fails():
        raise RuntimeError("step failed")

    with pytest.raises(RuntimeError, match="step failed"):
        with_flash_attention(fails)()
    assert blocks.WRITTEN_ATTENTION_MAX_POSITIONS == constant
