"""nGPT gradients against the official code's block structure, restated in float64.

The official block (NVIDIA/ngpt model.py) differs from ngpt_ds in form only: it feeds the raw
hidden state to q/k/v, normalizes it again before each update (Norm(h) + alpha (Norm(h_A) -
Norm(h))), multiplies q and k each by s_qk, puts sqrt(d) on u as well as v, and writes the update
explicitly. The reference below has that structure (with a correct RoPE, docs/ngpt_notes.md), so
every gradient must agree with ngpt_ds to float64 rounding, except the input embedding's radial
part: ngpt_ds normalizes E[x] once (h = Norm(E[x])), so its embedding gradient is the tangent
projection of the reference's. See docs/ngpt_notes.md, "Gradients".
"""

import math

import pytest
import torch
import torch.nn.functional as F

from ngpt_ds.model import NGPT, ModelConfig, sphere_matrices

ALPHA_INIT, S_QK_INIT, S_UV_INIT, S_Z_INIT = 0.05, 1.0, 1.0, 1.0  # PAPER §2.5 / Table 3 defaults


def tiny_config(**overrides) -> ModelConfig:
    values = dict(arch="ngpt", vocab_size=61, n_layer=2, n_embd=32, n_head=4, seq_len=32)
    values.update(overrides)
    return ModelConfig(**values).validate()


def perturbed_model(config: ModelConfig, dtype=torch.float32, seed: int = 3) -> NGPT:
    """An nGPT whose every scaling vector is moved off its init, so each one matters."""
    torch.manual_seed(seed)
    model = NGPT(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".param"):
                param.mul_(1 + 0.5 * torch.randn_like(param))
        model.s_z.param.mul_(8.0)
        model.to(dtype)
        for matrix in sphere_matrices(model):  # unit norm to the new dtype's rounding
            matrix.param.div_(matrix.param.norm(dim=matrix.norm_dim, keepdim=True))
    return model


def _norm(x):
    return x / x.norm(dim=-1, keepdim=True)


def _rope_tables(T, head_dim, base):
    """cos/sin of position * base^(-2i/head_dim), with the angles in float64 (as the model forms them)."""
    half = head_dim // 2
    inv_freq = base ** (-2.0 * torch.arange(half, dtype=torch.float64) / head_dim)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq
    return angles.cos()[:, None], angles.sin()[:, None]  # [T, 1, half]


def official_structure_forward(p: dict, config: ModelConfig, tokens: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, V] from parameters `p` (float64, named as ngpt_ds names them), computed the way
    the official block is laid out (module docstring), batched, with plain autograd."""
    d, H, L = config.n_embd, config.n_head, config.n_layer
    dh, hidden = d // H, config.mlp_width
    sd = 1 / math.sqrt(d)  # alpha, s_qk and s_z scale (PAPER §2.5)
    B, T = tokens.shape
    cos, sin = _rope_tables(T, dh, config.rope_base)

    def rope(x):  # x [B, T, H, dh]; pairs (i, i + dh/2)
        x1, x2 = x[..., : dh // 2], x[..., dh // 2 :]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    causal = torch.ones(T, T, dtype=torch.bool).tril()
    h = p["embed.weight"][tokens]  # raw E[x] (unit rows)
    for layer in range(L):
        b = f"blocks.{layer}."
        W = p[b + "attn.qkv.weight"]
        q, k, v = (h @ W[i * d : (i + 1) * d].T for i in range(3))  # the raw h goes to q, k, v
        q, k, v = (t.reshape(B, T, H, dh) for t in (q, k, v))
        s_qk = (p[b + "attn.s_qk.param"] * (S_QK_INIT / sd)).view(H, dh)
        q, k = s_qk * _norm(rope(q)), s_qk * _norm(rope(k))  # s_qk on each (eqs. 15-16)
        scores = torch.einsum("bthd,bshd->bhts", q, k) * math.sqrt(dh)
        probs = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = torch.einsum("bhts,bshd->bthd", probs, v).reshape(B, T, d)
        h_att = y @ p[b + "attn.out.weight"].T
        alpha = (p[b + "attn_alpha.param"] * (ALPHA_INIT / sd)).abs()
        a, a_new = _norm(h), _norm(h_att)  # h normalized again
        h = _norm(a + alpha * (a_new - a))  # eq. 10, written out
        uv = h @ p[b + "mlp.up_gate.weight"].T
        s_uv = torch.cat([p[b + "mlp.s_u.param"], p[b + "mlp.s_v.param"]]) * (S_UV_INIT * math.sqrt(d))
        u, v = (uv * s_uv).split(hidden, dim=-1)  # sqrt(d) on u and v
        h_mlp = (u * F.silu(v)) @ p[b + "mlp.down.weight"].T
        alpha = (p[b + "mlp_alpha.param"] * (ALPHA_INIT / sd)).abs()
        a, a_new = _norm(h), _norm(h_mlp)
        h = _norm(a + alpha * (a_new - a))  # eq. 11
    s_z = p["s_z.param"] * (S_Z_INIT / sd)
    return s_z * (h @ p["head.weight"].T)  # eq. 24, no final norm


def gradients(model: NGPT, tokens, targets):
    model.zero_grad()
    logits, loss = model(tokens, targets)
    loss.backward()
    return logits.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def reference_gradients(model: NGPT, tokens, targets):
    p = {n: t.detach().double().clone().requires_grad_() for n, t in model.named_parameters()}
    logits = official_structure_forward(p, model.config, tokens)
    F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    return logits.detach(), {n: t.grad for n, t in p.items()}


def relative(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# T 8: 16 tokens < d, s_z and s_u/s_v scale the outputs; T 24: 48 tokens > d, they are folded into
# the weight rows (layers.scaled_linear). Both forms must give the same gradients.
@pytest.mark.parametrize("T", [8, 24])
def test_gradients_equal_official_structure_except_embedding_radial_part(T):
    config = tiny_config()
    model = perturbed_model(config, torch.float64)
    tokens = torch.randint(0, config.vocab_size, (2, T + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits, grads = gradients(model, inputs, targets)
    ref_logits, ref_grads = reference_gradients(model, inputs, targets)
    assert relative(logits, ref_logits) < 1e-12
    for name, grad in grads.items():
        if name != "embed.weight":
            assert relative(grad, ref_grads[name]) < 1e-10, name
    e, g_ref = model.embed.weight.detach(), ref_grads["embed.weight"]
    radial = (g_ref * e).sum(dim=1, keepdim=True) * e
    # The official structure leaves a radial part (through v, which sees the raw E[x]) ...
    assert radial.norm() / g_ref.norm() > 1e-3
    # ... which ngpt_ds's gradient does not have; the tangent parts are equal.
    assert relative(grads["embed.weight"], g_ref - radial) < 1e-10


def test_embedding_gradient_has_no_radial_component():
    """h = Norm(E[x]): each embedding row's gradient g is orthogonal to its unit row e (fp32)."""
    config = tiny_config()
    model = perturbed_model(config)
    tokens = torch.randint(0, config.vocab_size, (4, 33))
    _, grads = gradients(model, tokens[:, :-1], tokens[:, 1:])
    g, e = grads["embed.weight"], model.embed.weight.detach()
    used = g.norm(dim=1) > 0
    assert used.sum() > 30
    radial = (g * e).sum(dim=1).abs()[used] / g.norm(dim=1)[used]
    assert radial.max() < 1e-6, radial.max()


def test_forward_unchanged_by_normalizing_the_embedding():
    """Norm(E[x]) = E[x] for unit rows: logits equal those of blocks run on the raw lookup."""
    config = tiny_config()
    model = perturbed_model(config)
    tokens = torch.randint(0, config.vocab_size, (2, 20))
    with torch.no_grad():
        logits, _ = model(tokens)
        h = model.embed(tokens)  # the raw lookup, as before the normalization was added
        cos, sin = model.rotary.tables(tokens.shape[1], h.device, h.dtype)
        for block in model.blocks:
            h = block(h, cos, sin)
        raw = model.logits(h)
    assert logits.abs().max() > 1.0
    torch.testing.assert_close(logits, raw, atol=1e-6 * logits.abs().max().item(), rtol=0)
