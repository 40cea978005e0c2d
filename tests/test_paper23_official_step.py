"""nGPT against the official code's parameter layout: forward, and training steps with renormalization.

The reference below restates, in float64, the official model (NVIDIA/ngpt model.py) under its own
state-dict names and shapes: separate `query`, `key`, `value`; `c_fc` [8d, d] with one `suv` [8d] that
carries sqrt(d) on u and on v; `sqk` multiplying q and k; Norm(h) again before each update; abs(alpha);
`sz` on the logits. Its RoPE is a correct one (the official function is not a rotation). Its optimizer
step is Adam written out (betas (0.9, 0.95), eps 1e-8, weight decay 0), after a clip of the global gradient
norm to 1.0, followed by the official renormalization: every matrix divided by its norm along the dim
listed for it (embedding, head, q/k/v, c_fc: dim 1; attention output and MLP output: dim 0).

ngpt_ds must give the same logits, loss, gradient norm and, after each step, the same weights (mapped to
the official names), to float64 rounding. One difference is by design (docs/ngpt_notes.md, "The input
embedding"): ngpt_ds starts from h = Norm(E[x]), the official code from the raw E[x]. The two give the
same value and differ only in the embedding gradient's radial part, so the forward is compared with both
and the steps with the reference started from Norm(E[x]).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from ngpt_ds.model import NGPT, ModelConfig, normalize_matrices_
from ngpt_ds.train.optim import parameter_groups

D, H, L, V, T, B = 32, 4, 2, 61, 12, 3
LR, BETAS, EPS, CLIP = 1e-2, (0.9, 0.95), 1e-8, 1.0

# The official normalize_matrices: which dim of each official weight is made unit norm.
OFFICIAL_NORM_DIMS = {
    "transformer.wte.weight": 1,
    "lm_head.weight": 1,
    "query.weight": 1,
    "key.weight": 1,
    "value.weight": 1,
    "c_fc.weight": 1,
    "att_c_proj.weight": 0,
    "mlp_c_proj.weight": 0,
}


def official_dim(name: str) -> int | None:
    for suffix, dim in OFFICIAL_NORM_DIMS.items():
        if name.endswith(suffix):
            return dim
    return None  # a scaling vector: never renormalized


def to_official(model: NGPT) -> dict[str, torch.Tensor]:
    """ngpt_ds's parameters under the official names and shapes (float64 copies)."""
    p = {n: t.detach().double().clone() for n, t in model.named_parameters()}
    out = {"transformer.wte.weight": p["embed.weight"], "lm_head.weight": p["head.weight"], "sz": p["s_z.param"]}
    for i in range(L):
        b, o = f"blocks.{i}.", f"transformer.h.{i}."
        q, k, v = p[b + "attn.qkv.weight"].split(D)
        out |= {o + "query.weight": q, o + "key.weight": k, o + "value.weight": v}
        out[o + "att_c_proj.weight"] = p[b + "attn.out.weight"]
        out[o + "c_fc.weight"] = p[b + "mlp.up_gate.weight"]
        out[o + "mlp_c_proj.weight"] = p[b + "mlp.down.weight"]
        out[o + "sqk"] = p[b + "attn.s_qk.param"]
        out[o + "suv"] = torch.cat([p[b + "mlp.s_u.param"], p[b + "mlp.s_v.param"]])
        out[o + "attn_alpha"] = p[b + "attn_alpha.param"]
        out[o + "mlp_alpha"] = p[b + "mlp_alpha.param"]
    return out


def norm(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def rope(x: torch.Tensor) -> torch.Tensor:
    """A correct RoPE, base 10000, pairs (i, i + dh/2); x [B, T, H, dh]. Angles in float64."""
    dh = x.shape[-1]
    half = dh // 2
    theta = torch.arange(x.shape[1], dtype=torch.float64)[:, None] * 10000.0 ** (
        -2.0 * torch.arange(half, dtype=torch.float64) / dh
    )
    cos, sin = theta.cos()[:, None], theta.sin()[:, None]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def official_logits(p: dict[str, torch.Tensor], tokens: torch.Tensor, normalized_embedding: bool) -> torch.Tensor:
    """The official forward with the paper's constants (alpha 0.05, s_qk 1, s_uv 1, s_z 1; scales 1/sqrt(d),
    except s_uv's 1; sqrt(d) on u and v; softmax scale sqrt(d_head))."""
    dh, base_scale = D // H, 1 / math.sqrt(D)
    h = p["transformer.wte.weight"][tokens]
    if normalized_embedding:
        h = norm(h)
    Tn = tokens.shape[1]
    causal = torch.ones(Tn, Tn, dtype=torch.bool).tril()
    for i in range(L):
        o = f"transformer.h.{i}."
        q, k, v = ((h @ p[o + name + ".weight"].T).view(B, Tn, H, dh) for name in ("query", "key", "value"))
        sqk = (p[o + "sqk"] * (1.0 / base_scale)).view(H, dh)
        q, k = sqk * norm(rope(q)), sqk * norm(rope(k))
        scores = torch.einsum("bthd,bshd->bhts", q, k) * math.sqrt(dh)
        probs = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = torch.einsum("bhts,bshd->bthd", probs, v).reshape(B, Tn, D)
        h_att = y @ p[o + "att_c_proj.weight"].T
        lr_a = (p[o + "attn_alpha"] * (0.05 / base_scale)).abs()
        h = norm(norm(h) + lr_a * (norm(h_att) - norm(h)))
        uv = (h @ p[o + "c_fc.weight"].T) * (p[o + "suv"] * (1.0 / 1.0) * math.sqrt(D))
        u, v = uv.chunk(2, dim=-1)
        h_mlp = (u * F.silu(v)) @ p[o + "mlp_c_proj.weight"].T
        lr_m = (p[o + "mlp_alpha"] * (0.05 / base_scale)).abs()
        h = norm(norm(h) + lr_m * (norm(h_mlp) - norm(h)))
    sz = p["sz"] * (1.0 / base_scale)
    return sz * (h @ p["lm_head.weight"].T)


class OfficialTrainer:
    """Adam written out, clip of the global gradient norm, then the official renormalization."""

    def __init__(self, params: dict[str, torch.Tensor]):
        self.p = {n: t.clone().requires_grad_() for n, t in params.items()}
        self.m = {n: torch.zeros_like(t) for n, t in params.items()}
        self.v = {n: torch.zeros_like(t) for n, t in params.items()}
        self.t = 0

    def step(self, tokens, targets) -> tuple[float, float]:
        logits = official_logits(self.p, tokens, normalized_embedding=True)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        grads = torch.autograd.grad(loss, list(self.p.values()))
        total = torch.sqrt(sum((g * g).sum() for g in grads))
        clip = min(1.0, CLIP / (total.item() + 1e-6))
        self.t += 1
        with torch.no_grad():
            for (name, param), g in zip(self.p.items(), grads):
                g = g * clip
                self.m[name] = BETAS[0] * self.m[name] + (1 - BETAS[0]) * g
                self.v[name] = BETAS[1] * self.v[name] + (1 - BETAS[1]) * g * g
                m_hat = self.m[name] / (1 - BETAS[0] ** self.t)
                v_hat = self.v[name] / (1 - BETAS[1] ** self.t)
                param -= LR * m_hat / (v_hat.sqrt() + EPS)
                dim = official_dim(name)
                if dim is not None:
                    param /= param.norm(dim=dim, keepdim=True)
        return loss.item(), total.item()


def perturbed_model() -> NGPT:
    """A float64 nGPT whose scaling vectors are moved off their init (each one then matters)."""
    torch.manual_seed(23)
    model = NGPT(ModelConfig(arch="ngpt", vocab_size=V, n_layer=L, n_embd=D, n_head=H, seq_len=32).validate())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".param"):
                param.mul_(1 + 0.5 * torch.randn_like(param))
        model.s_z.param.mul_(8.0)
    model.double()
    normalize_matrices_(model)
    return model


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(5)
    out = []
    for _ in range(n):
        tokens = torch.randint(0, V, (B, T + 1), generator=generator)
        out.append((tokens[:, :-1], tokens[:, 1:]))
    return out


@pytest.mark.parametrize("normalized_embedding", [True, False])
def test_forward_equals_the_official_layout_with_its_state_dict_names(normalized_embedding):
    model = perturbed_model()
    tokens, targets = batches(1)[0]
    logits, loss = model(tokens, targets)
    reference = official_logits(to_official(model), tokens, normalized_embedding)
    torch.testing.assert_close(logits, reference, atol=1e-12, rtol=0)
    assert logits.abs().max() > 1.0  # s_z x 8: the comparison is not of near-zero logits
    torch.testing.assert_close(loss, F.cross_entropy(reference.flatten(0, 1), targets.flatten()), atol=1e-12, rtol=0)


def test_three_adam_steps_with_clip_and_renormalization_match_the_official_step():
    """Spec of a training step: Adam (0.9, 0.95), eps 1e-8, wd 0, global clip 1.0, then each matrix
    renormalized along its official dim. ngpt_ds: its optimizer groups, torch's AdamW, its normalize_matrices_."""
    model = perturbed_model()
    reference = OfficialTrainer(to_official(model))
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay=0.0), lr=LR, betas=BETAS, eps=EPS, foreach=False)
    for tokens, targets in batches(3):
        _, loss = model(tokens, targets)
        optimizer.zero_grad()
        loss.backward()
        total = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        normalize_matrices_(model)
        ref_loss, ref_total = reference.step(tokens, targets)
        assert loss.item() == pytest.approx(ref_loss, rel=1e-12)
        assert total.item() == pytest.approx(ref_total, rel=1e-10)
        assert ref_total > CLIP  # the clip acts in these steps
        ours = to_official(model)
        for name, value in reference.p.items():
            torch.testing.assert_close(
                ours[name], value.detach(), atol=1e-11, rtol=0, msg=lambda m, n=name: f"{n}: {m}"
            )
    moved = (to_official(model)["transformer.h.0.sqk"] - to_official(perturbed_model())["transformer.h.0.sqk"]).abs()
    assert moved.max() > 1e-3  # the steps changed the parameters


def test_initial_loss_is_ln_of_the_paper_vocabularies():
    """Spec §5 item 6: at init the logits are cosines in [-1, 1] (s_z = 1), so the loss is about ln V:
    10.37 for LLaMA-2's 32000 tokens, 10.83 for GPT-2's padded 50304. More exactly: the cosine of two
    random unit vectors in d dims has variance 1/d, so E[logsumexp] = ln V + 1/(2d) to second order, and
    the target's own logit has mean 0. The tolerance is the spread over seeds at 256 tokens (about 0.02)."""
    d = 64
    for vocab, expected in ((32000, 10.37), (50304, 10.83)):
        torch.manual_seed(1)
        model = NGPT(ModelConfig(arch="ngpt", vocab_size=vocab, n_layer=2, n_embd=d, n_head=4, seq_len=32))
        tokens = torch.randint(0, vocab, (8, 33))
        with torch.no_grad():
            logits, loss = model(tokens[:, :-1], tokens[:, 1:])
        assert logits.abs().max().item() <= 1.0 + 1e-6
        assert math.log(vocab) == pytest.approx(expected, abs=0.005)
        assert loss.item() == pytest.approx(math.log(vocab) + 1 / (2 * d), abs=0.03)
