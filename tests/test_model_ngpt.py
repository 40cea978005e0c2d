"""nGPT correctness: unit norms, bounds, scalar values, block identities, RoPE, and parity with
a naive restatement of the paper's equations."""

import math
from pathlib import Path

import pytest
import torch

from ngpt_ds.model import NGPT, ModelConfig, build_model, l2_normalize, normalize_matrices_, sphere_matrices
from ngpt_ds.model.layers import RotaryEmbedding

# Written from docs/ngpt_notes.md's table, independently of the code: parameter name suffix -> normalized dim.
EXPECTED_NORM_DIMS = {
    "embed.weight": 1,  # E_in [V, d]: rows
    "head.weight": 1,  # E_out [V, d]: rows
    "attn.qkv.weight": 1,  # [W_q; W_k; W_v] [3d, d]: rows over the d_model input
    "attn.out.weight": 0,  # W_o [d, d]: columns over the d_model output
    "mlp.up_gate.weight": 1,  # [W_u; W_v] [2*4d, d]: rows
    "mlp.down.weight": 0,  # W_2 [d, 4d]: columns
}
SCALAR_SUFFIXES = (
    "attn_alpha.param",
    "mlp_alpha.param",
    "attn.s_qk.param",
    "mlp.s_u.param",
    "mlp.s_v.param",
    "s_z.param",
)


def tiny_config(**overrides) -> ModelConfig:
    values = dict(arch="ngpt", vocab_size=97, n_layer=2, n_embd=32, n_head=4, seq_len=16)
    values.update(overrides)
    return ModelConfig(**values).validate()


def expected_dim(name: str) -> int:
    matches = [dim for suffix, dim in EXPECTED_NORM_DIMS.items() if name.endswith(suffix)]
    assert len(matches) == 1, f"{name} is not in the table"
    return matches[0]


def assert_unit_norms(model):
    for name, param in model.named_parameters():
        if name.endswith(".weight"):
            norms = param.detach().float().norm(dim=expected_dim(name))
            torch.testing.assert_close(
                norms, torch.ones_like(norms), atol=1e-5, rtol=0, msg=lambda m, name=name: f"{name}: {m}"
            )


def test_declared_matrices_are_exactly_the_documented_table():
    model = NGPT(tiny_config())
    declared = {m.name: m.norm_dim for m in sphere_matrices(model)}
    matrix_names = {n for n, p in model.named_parameters() if p.dim() == 2}
    assert set(declared) == matrix_names
    for name, dim in declared.items():
        assert dim == expected_dim(name), name
    assert len(declared) == 2 + 4 * model.config.n_layer


def test_unit_norms_after_init_and_after_step_and_scalars_left_alone():
    torch.manual_seed(0)
    model = NGPT(tiny_config())
    assert_unit_norms(model)
    # A square matrix normalized along dim 0 is not unit along dim 1: a transposed layout fails.
    w_o = model.blocks[0].attn.out.weight.detach()
    assert (w_o.norm(dim=1) - 1).abs().max() > 1e-2

    scalars_at_init = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith(".param")}
    assert len(scalars_at_init) == 5 * model.config.n_layer + 1
    assert all(name.endswith(SCALAR_SUFFIXES) for name in scalars_at_init)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    tokens = torch.randint(0, 97, (2, 16))
    _, loss = model(tokens, tokens.roll(-1, 1))
    loss.backward()
    optimizer.step()
    for name, param in model.named_parameters():
        if name.endswith(".weight"):
            assert (param.detach().norm(dim=expected_dim(name)) - 1).abs().max() > 1e-4, name
    scalars_after_step = {n: model.get_parameter(n).detach().clone() for n in scalars_at_init}
    normalize_matrices_(model)
    assert_unit_norms(model)
    for name, after_step in scalars_after_step.items():
        assert (after_step - scalars_at_init[name]).abs().max() > 1e-3, name  # Adam moved it
        assert torch.equal(model.get_parameter(name).detach(), after_step), name  # renorm did not


def test_hidden_state_is_unit_after_embedding_and_every_update():
    torch.manual_seed(1)
    model = NGPT(tiny_config())
    tokens = torch.randint(0, 97, (3, 16))
    h = model.embed(tokens)
    norms = [h.norm(dim=-1)]
    cos, sin = model.rotary.tables(16, h.device, h.dtype)
    for block in model.blocks:
        h = block.attention_update(h, cos, sin)
        norms.append(h.norm(dim=-1))
        h = block.mlp_update(h)
        norms.append(h.norm(dim=-1))
    for n in norms:
        torch.testing.assert_close(n, torch.ones_like(n), atol=1e-5, rtol=0)
    torch.testing.assert_close(h, model.hidden_states(tokens), atol=1e-6, rtol=0)


def test_queries_and_keys_are_unit_per_head_and_attention_logits_bounded():
    torch.manual_seed(2)
    config = tiny_config()
    model = NGPT(config)
    attn = model.blocks[0].attn
    h = l2_normalize(torch.randn(2, 16, 32))
    cos, sin = model.rotary.tables(16, h.device, h.dtype)
    q, k, _ = attn.project_qkv(h, cos, sin)  # s_qk = 1 at init
    for x in (q, k):
        torch.testing.assert_close(x.norm(dim=-1), torch.ones(2, 16, 4), atol=1e-5, rtol=0)
    scores = torch.einsum("bthd,bshd->bhts", q, k) * attn.softmax_scale
    bound = math.sqrt(config.head_dim)
    assert attn.softmax_scale == pytest.approx(bound)
    assert scores.abs().max() <= bound + 1e-5
    # s_qk multiplies both q and k, so the logit carries s_qk^2 (eqs. 15-16); the code puts
    # s_qk^2 on q and leaves k unit.
    with torch.no_grad():
        attn.s_qk.param.mul_(2.0)
    q2, k2, _ = attn.project_qkv(h, cos, sin)
    scores2 = torch.einsum("bthd,bshd->bhts", q2, k2) * attn.softmax_scale
    torch.testing.assert_close(scores2, 4 * scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(k2.norm(dim=-1), torch.ones(2, 16, 4), atol=1e-5, rtol=0)


def test_output_logits_bounded_by_s_z():
    torch.manual_seed(3)
    model = NGPT(tiny_config())
    tokens = torch.randint(0, 97, (2, 16))
    logits, _ = model(tokens)
    assert logits.abs().max() <= 1.0 + 1e-6
    with torch.no_grad():
        model.s_z.param.copy_(torch.randn(97) * 0.5)
    logits, _ = model(tokens)
    bound = model.s_z().abs().detach()
    assert (logits.abs() <= bound + 1e-5).all()
    assert (logits.abs() / bound).max() > 0.3  # the bound is not vacuous


@pytest.mark.parametrize(
    "module_path, stored, effective",
    [
        ("blocks.0.attn_alpha", 1 / math.sqrt(32), 0.05),
        ("blocks.0.mlp_alpha", 1 / math.sqrt(32), 0.05),
        ("blocks.0.attn.s_qk", 1 / math.sqrt(32), 1.0),
        ("blocks.0.mlp.s_u", 1.0, 1.0),
        ("blocks.0.mlp.s_v", 1.0, 1.0),
        ("s_z", 1 / math.sqrt(32), 1.0),
    ],
)
def test_scalar_stored_and_effective_values(module_path, stored, effective):
    model = NGPT(tiny_config())
    module = model.get_submodule(module_path)
    torch.testing.assert_close(module.param.detach(), torch.full_like(module.param, stored), atol=1e-7, rtol=0)
    torch.testing.assert_close(module().detach(), torch.full_like(module.param, effective), atol=1e-7, rtol=0)
    # d(effective)/d(stored) = init / scale: the paper's effective learning-rate trick.
    module().sum().backward()
    torch.testing.assert_close(module.param.grad, torch.full_like(module.param, effective / stored), atol=1e-5, rtol=0)


def test_v_gets_sqrt_d_and_alpha_takes_absolute_value():
    config = tiny_config()
    model = NGPT(config)
    assert model.blocks[0].mlp.v_multiplier == pytest.approx(math.sqrt(32))
    alpha = model.blocks[0].attn_alpha
    with torch.no_grad():
        alpha.param.neg_()
    torch.testing.assert_close(alpha().detach(), torch.full((32,), 0.05), atol=1e-7, rtol=0)


@pytest.mark.parametrize("vocab", [97, 4096])
def test_initial_loss_is_log_vocab(vocab):
    torch.manual_seed(4)
    model = NGPT(tiny_config(vocab_size=vocab))
    tokens = torch.randint(0, vocab, (4, 16))
    _, loss = model(tokens, tokens.roll(-1, 1))
    assert loss.item() == pytest.approx(math.log(vocab), abs=0.02)


def test_block_identities():
    torch.manual_seed(5)
    model = NGPT(tiny_config())
    block = model.blocks[0]
    h = l2_normalize(torch.randn(2, 16, 32))
    cos, sin = model.rotary.tables(16, h.device, h.dtype)
    with torch.no_grad():
        block.attn_alpha.param.zero_()
        block.mlp_alpha.param.zero_()
    torch.testing.assert_close(block.attention_update(h, cos, sin), h, atol=1e-6, rtol=0)
    torch.testing.assert_close(block.mlp_update(h), h, atol=1e-6, rtol=0)
    with torch.no_grad():
        block.attn_alpha.param.fill_(block.attn_alpha.scale / block.attn_alpha.init)  # effective 1
        block.mlp_alpha.param.fill_(block.mlp_alpha.scale / block.mlp_alpha.init)
    h_attn = block.attn(h, cos, sin)
    torch.testing.assert_close(
        block.attention_update(h, cos, sin), h_attn / h_attn.norm(dim=-1, keepdim=True), atol=1e-6, rtol=0
    )
    h_mlp = block.mlp(h)
    torch.testing.assert_close(block.mlp_update(h), h_mlp / h_mlp.norm(dim=-1, keepdim=True), atol=1e-6, rtol=0)
    # The MLP update is invariant to a global rescale of u (PAPER §2.4.2).
    with torch.no_grad():
        block.mlp_alpha.param.fill_(0.3)
    before = block.mlp_update(h)
    with torch.no_grad():
        block.mlp.s_u.param.mul_(7.0)
    torch.testing.assert_close(block.mlp_update(h), before, atol=1e-6, rtol=0)


def test_rope_is_relative_and_norm_preserving():
    torch.manual_seed(6)
    rope = RotaryEmbedding(head_dim=64, base=10000.0)
    q, k = torch.randn(64), torch.randn(64)

    def at(x, pos):
        cos, sin = rope.tables(1, x.device, x.dtype, offset=pos)
        return RotaryEmbedding.rotate(x.view(1, 1, 1, 64), cos, sin).view(64)

    def score(m, n):
        return torch.dot(at(q, m), at(k, n)).item()

    assert score(10, 5) == pytest.approx(score(30, 25), abs=1e-4)
    assert score(1000, 990) == pytest.approx(score(10, 0), abs=1e-3)
    assert score(10, 5) != pytest.approx(score(10, 6), abs=1e-2)
    for pos in (0, 7, 513):
        assert at(q, pos).norm().item() == pytest.approx(q.norm().item(), rel=1e-6)
    # Position 0 is the identity; tables of a longer call agree with an offset call.
    torch.testing.assert_close(at(q, 0), q)
    cos, sin = rope.tables(20, torch.device("cpu"), torch.float32)
    cos5, sin5 = rope.tables(1, torch.device("cpu"), torch.float32, offset=5)
    torch.testing.assert_close(cos[5:6], cos5)
    torch.testing.assert_close(sin[5:6], sin5)


def test_rope_tables_at_long_context_are_float32_roundings_of_the_exact_angles():
    """Fault: the angles position * base^(-2i/dh) were formed in float32, so at the 8k preset's positions cos
    and sin were off by up to 3.0e-4 (1.2e-3 at 32k), and the score q.k of unit q, k at positions (8191, 8190)
    differed from the same pair at (1, 0) by 6.8e-6, at (32767, 32000) from (767, 0) by 1.5e-5 (now <= 1.5e-8,
    fp32 arithmetic). Reference: float64 angles, independent of the code."""
    T, dh, base = 32768, 64, 10000.0
    rope = RotaryEmbedding(head_dim=dh, base=base)
    cos, sin = rope.tables(T, torch.device("cpu"), torch.float32)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * base ** (
        -2.0 * torch.arange(dh // 2, dtype=torch.float64) / dh
    )
    assert (cos[:, 0, : dh // 2].double() - angles.cos()).abs().max() < 6e-8  # half a float32 ulp of 1
    assert (sin[:, 0, dh // 2 :].double() - angles.sin()).abs().max() < 6e-8
    torch.manual_seed(12)
    q, k = l2_normalize(torch.randn(2, dh)).unbind(0)

    def score(m, n):
        qm = RotaryEmbedding.rotate(q.view(1, 1, dh), cos[m : m + 1], sin[m : m + 1])
        kn = RotaryEmbedding.rotate(k.view(1, 1, dh), cos[n : n + 1], sin[n : n + 1])
        return torch.dot(qm.view(dh), kn.view(dh)).item()

    for m, n in ((8191, 8000), (32767, 32000), (8191, 8190)):
        assert score(m, n) == pytest.approx(score(m - n, 0), abs=1e-6), (m, n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_rope_over_the_whole_head_equals_the_per_half_rotation_bit_for_bit(dtype):
    """rotate computes x * [cos, cos] + [x2, x1] * [-sin, sin]: the products and sums of the per-half
    form (x1 cos - x2 sin, x2 cos + x1 sin), so the same values to the last bit in every dtype."""
    torch.manual_seed(7)
    rope = RotaryEmbedding(head_dim=48, base=10000.0)
    x = torch.randn(2, 40, 2, 3, 48, dtype=dtype)
    cos, sin = rope.tables(40, x.device, dtype, offset=9)
    assert cos.shape == sin.shape == (40, 1, 48)
    half_cos, half_sin = cos[..., :24].unsqueeze(1), sin[..., 24:].unsqueeze(1)
    torch.testing.assert_close(cos[..., 24:], cos[..., :24], rtol=0, atol=0)
    torch.testing.assert_close(sin[..., :24], -half_sin.squeeze(1), rtol=0, atol=0)
    x1, x2 = x.chunk(2, dim=-1)
    per_half = torch.cat((x1 * half_cos - x2 * half_sin, x2 * half_cos + x1 * half_sin), dim=-1)
    assert torch.equal(RotaryEmbedding.rotate(x, cos.unsqueeze(1), sin.unsqueeze(1)), per_half)


def test_a_copy_of_the_model_code_keeps_its_own_rope_operator(tmp_path, monkeypatch):
    """An HF export carries a copy of layers.py, which transformers imports under another module name
    (trust_remote_code). The fault: with one global operator name, importing a copy from another
    version replaced the installed code's RoPE tables too (checked with this test's altered copy: the
    installed tables' cos became 2.0). Each copy now registers an operator named after its module, in
    ASCII: transformers keeps a local folder's accented name in the module name, which torch could not
    register (UnicodeDecodeError while importing the copy)."""
    import importlib.util
    import sys

    from ngpt_ds.model import layers

    source = Path(layers.__file__).read_text(encoding="utf-8")
    altered = source.replace("cos, sin = angles.cos(), angles.sin()", "cos, sin = 2 * angles.cos(), angles.sin()")
    assert altered != source
    (tmp_path / "layers.py").write_text(altered, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("modèle_exporté.layers", tmp_path / "layers.py")
    copy = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "modèle_exporté.layers", copy)
    spec.loader.exec_module(copy)

    def cos_at_position_0(module):
        cos, _ = module.RotaryEmbedding(8, 10000.0).tables(3, torch.device("cpu"), torch.float32)
        return cos[0, 0, 0].item()

    assert cos_at_position_0(copy) == 2.0
    assert cos_at_position_0(layers) == 1.0
    assert copy._ROPE_TABLES_OP == "mod_le_export__layers::rope_tables" != layers._ROPE_TABLES_OP


# ---- parity with a naive restatement of the paper's equations (no code shared with the package)


def _naive_norm(x):
    return x / torch.sqrt((x * x).sum())


def _naive_rotate(x, pos, base):
    """RoPE on one head vector: pair (i, i + dh/2) rotated by pos * base^(-2i/dh)."""
    half = x.shape[0] // 2
    out = x.clone()
    for i in range(half):
        theta = pos * base ** (-2.0 * i / x.shape[0])
        c, s = math.cos(theta), math.sin(theta)
        out[i] = x[i] * c - x[i + half] * s
        out[i + half] = x[i + half] * c + x[i] * s
    return out


def naive_ngpt_logits(weights, config, tokens):
    """Paper eqs. 10-11, 15-16, 20-21, 24 token by token, in float64."""
    d, H = config.n_embd, config.n_head
    dh, hidden = d // H, 4 * d
    w = {name: t.double() for name, t in weights.items()}

    def eff(name, init, scale):
        return w[name] * (init / scale)

    sd = 1 / math.sqrt(d)
    T = len(tokens)
    # h = E_in[x] as the paper writes it: the rows are unit norm, so this is the value of ngpt_ds's
    # Norm(E_in[x]), whose normalization matters only for the gradient (tests/test_model_gradients.py).
    h = [w["embed.weight"][t] for t in tokens]
    for layer in range(config.n_layer):
        p = f"blocks.{layer}."
        W = w[p + "attn.qkv.weight"]
        Wq, Wk, Wv, Wo = W[:d], W[d : 2 * d], W[2 * d :], w[p + "attn.out.weight"]
        s_qk = eff(p + "attn.s_qk.param", 1.0, sd)
        alpha_a = eff(p + "attn_alpha.param", 0.05, sd).abs()
        alpha_m = eff(p + "mlp_alpha.param", 0.05, sd).abs()
        qs, ks, vs = [], [], []
        for t in range(T):
            q, k, v = Wq @ h[t], Wk @ h[t], Wv @ h[t]
            qh, kh = [], []
            for head in range(H):
                sl = slice(head * dh, (head + 1) * dh)
                qh.append(_naive_norm(_naive_rotate(q[sl], t, config.rope_base)) * s_qk[sl])
                kh.append(_naive_norm(_naive_rotate(k[sl], t, config.rope_base)) * s_qk[sl])
            qs.append(qh), ks.append(kh), vs.append(v)
        new_h = []
        for t in range(T):
            y = torch.zeros(d, dtype=torch.float64)
            for head in range(H):
                sl = slice(head * dh, (head + 1) * dh)
                scores = torch.stack([qs[t][head] @ ks[j][head] for j in range(t + 1)]) * math.sqrt(dh)
                probs = torch.exp(scores - scores.max())
                probs = probs / probs.sum()
                y[sl] = sum(probs[j] * vs[j][sl] for j in range(t + 1))
            h_a = _naive_norm(Wo @ y)
            new_h.append(_naive_norm(h[t] + alpha_a * (h_a - h[t])))
        h = new_h
        Wuv, W2 = w[p + "mlp.up_gate.weight"], w[p + "mlp.down.weight"]
        s_u = eff(p + "mlp.s_u.param", 1.0, 1.0)
        s_v = eff(p + "mlp.s_v.param", 1.0, 1.0)
        for t in range(T):
            u = (Wuv[:hidden] @ h[t]) * s_u
            v = (Wuv[hidden:] @ h[t]) * s_v * math.sqrt(d)
            h_m = _naive_norm(W2 @ (u * v / (1 + torch.exp(-v))))
            h[t] = _naive_norm(h[t] + alpha_m * (h_m - h[t]))
    s_z = eff("s_z.param", 1.0, sd)
    return torch.stack([s_z * (w["head.weight"] @ h[t]) for t in range(T)])


def test_forward_matches_naive_paper_equations():
    torch.manual_seed(7)
    config = tiny_config(n_layer=2, n_embd=32, n_head=4, vocab_size=61)
    model = NGPT(config)
    with torch.no_grad():  # move every scalar away from its init so each one matters
        for name, param in model.named_parameters():
            if name.endswith(".param"):
                param.mul_(1 + 0.5 * torch.randn_like(param))
        model.s_z.param.mul_(8.0)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    tokens = torch.randint(0, 61, (2, 9))
    logits, _ = model(tokens)
    for b in range(2):
        reference = naive_ngpt_logits(weights, config, tokens[b].tolist())
        torch.testing.assert_close(logits[b].double(), reference, atol=1e-5, rtol=0)
    assert logits.abs().max() > 0.5


# ---- both models learn


@pytest.mark.parametrize("arch, lr", [("ngpt", 2e-2), ("gpt", 3e-3)])
def test_model_fits_a_repeated_batch(arch, lr):
    torch.manual_seed(8)
    model = build_model(tiny_config(arch=arch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    tokens = torch.randint(0, 97, (4, 17))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    losses = []
    for _ in range(60):
        _, loss = model(inputs, targets)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if arch == "ngpt":
            normalize_matrices_(model)
    assert losses[0] == pytest.approx(math.log(97), abs=0.3)
    assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_l2_normalize_gradient_matches_autograd_of_the_formula(dim):
    torch.manual_seed(9)
    x = torch.randn(5, 7, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: l2_normalize(t, dim), (x,))
    y = l2_normalize(x, dim)
    torch.testing.assert_close(y, x / x.norm(dim=dim, keepdim=True))
