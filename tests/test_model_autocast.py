"""Both models under CPU bf16 (and fp16) autocast: forward, backward and cached decoding run, and
agree with fp32 within the low-precision type's rounding.

Fault: nGPT's update lerp(h, Norm(h_A), alpha) got the fp32 residual stream h and the bf16
attention output (autocast runs matmuls in bf16; torch.lerp is on no autocast list) and raised.

Tolerances are multiples of bf16's unit roundoff u = 2^-8 (8 significand bits): each matmul rounds
its inputs to bf16 (relative error <= u each) and accumulates in fp32, and a few such roundings
compound through the layers. Measured on these models over three batches (docs/ngpt_notes.md):
relative error of the logits 0.77u (both models), of the loss <= 0.02u, of a gradient (norm of the
difference over norm) <= 4.0u for nGPT (s_qk) and <= 2.1u for GPT. Bounds: 2u, u/4 and 8u, and
a gradient cosine above 1 - (8u)^2 / 2, the cosine an orthogonal error of 8u would leave. fp16
autocast (u = 2^-11) gives the same multiples of its u (gradients <= 5.6u) and is held to the same.
"""

import pytest
import torch

from ngpt_ds.model import ModelConfig, build_model
from ngpt_ds.model.blocks import KVCache

U = 2.0**-8  # bf16 unit roundoff
UNIT_ROUNDOFF = {torch.bfloat16: U, torch.float16: 2.0**-11}


def tiny_config(arch: str) -> ModelConfig:
    return ModelConfig(arch=arch, vocab_size=97, n_layer=2, n_embd=32, n_head=4, seq_len=32).validate()


def model_for(arch: str):
    """A tiny model with its scaling vectors moved off their inits (nGPT: s_z ~8, logits up to ~8)."""
    torch.manual_seed(11)
    model = build_model(tiny_config(arch))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".param"):
                param.mul_(1 + 0.5 * torch.randn_like(param))
        if arch == "ngpt":
            model.s_z.param.mul_(8.0)
    return model


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def run(model, tokens, autocast: bool, dtype=torch.bfloat16):
    model.zero_grad()
    with torch.autocast("cpu", dtype=dtype, enabled=autocast):
        logits, loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    return logits.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_forward_and_backward_under_autocast_match_fp32(arch, dtype):
    u = UNIT_ROUNDOFF[dtype]
    model = model_for(arch)
    tokens = torch.randint(0, 97, (4, 33))
    logits32, loss32, grads32 = run(model, tokens, autocast=False)
    logits16, loss16, grads16 = run(model, tokens, autocast=True, dtype=dtype)
    assert logits16.dtype == dtype  # autocast was on: the head ran in low precision
    if arch == "ngpt":
        assert logits32.abs().max() > 4.0
    assert relative(logits16, logits32) < 2 * u
    assert abs(loss16.item() - loss32.item()) / loss32.item() < u / 4
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for name, g32 in grads32.items():
        g16 = grads16[name]
        assert g16.dtype == torch.float32, name
        assert relative(g16, g32) < 8 * u, name
        cosine = torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0).item()
        assert cosine > 1 - (8 * u) ** 2 / 2, name


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_cached_decoding_under_bf16_autocast_matches_fp32(arch):
    """Inference (ngpt_ds.infer.generate) runs hidden_states with a KVCache: prompt, then one token
    at a time. Under autocast the last-position logits match an fp32 full forward."""
    model = model_for(arch).eval()
    tokens = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        full32, _ = model(tokens)
        cache, steps = KVCache(), []
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = model.hidden_states(tokens[:, :8], cache)
            steps.append(model.logits(h[:, -1]))
            for t in range(8, 12):
                h = model.hidden_states(tokens[:, t : t + 1], cache)
                steps.append(model.logits(h[:, -1]))
    assert cache.length == 12
    for i, logits in enumerate(steps):
        assert logits.dtype == torch.bfloat16
        assert relative(logits, full32[:, 7 + i]) < 2 * U, i
