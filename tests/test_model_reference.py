"""The model's numbers against float64 restatements of the equations, where no other test compares them:
the GPT baseline's whole forward pass, and the first loss the DeepSpeed trainer logs.

nGPT's forward (tests/test_model_ngpt.py), its gradients (tests/test_model_gradients.py), cached decoding
(tests/test_infer_generate.py) and the HF wrapper (tests/test_hf_export.py) have their own references.
"""

import json
import math

import torch
import torch.nn.functional as F
from test_model_ngpt import naive_ngpt_logits

from ngpt_ds.data.loader import TokenWindowLoader
from ngpt_ds.model import ModelConfig, build_model

from conftest import read_metrics, tiny_ngpt, tiny_train, torchrun, train_cmd, write_ds_config, write_yaml

RMS_EPS = 1e-6  # the official GPT baseline's RMSNorm epsilon


def _rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """x [B, T, H, dh] float64 -> x rotated at positions 0..T-1: the pair (x_i, x_{i+dh/2}), read as the
    complex number x_i + j x_{i+dh/2}, is multiplied by exp(j t base^(-2i/dh)) (angles in float64)."""
    T, dh = x.shape[1], x.shape[-1]
    half = dh // 2
    theta = torch.arange(T, dtype=torch.float64)[:, None] * base ** (
        -2.0 * torch.arange(half, dtype=torch.float64) / dh
    )
    z = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(theta), theta)[:, None, :]
    return torch.cat((z.real, z.imag), dim=-1)


def reference_gpt_logits(w: dict, config: ModelConfig, tokens: torch.Tensor) -> torch.Tensor:
    """The pre-norm baseline in float64: h += ATTN(RMSNorm(h)), h += MLP(RMSNorm(h)), logits =
    RMSNorm(h) E_out^T; causal softmax with scale 1/sqrt(dh); MLP = W_2 (u * SiLU(v)), [u; v] = W h."""
    w = {name: t.double() for name, t in w.items()}
    d, H = config.n_embd, config.n_head
    dh, hidden = d // H, 4 * d
    B, T = tokens.shape

    def rms(x, g):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + RMS_EPS) * g

    causal = torch.ones(T, T, dtype=torch.bool).tril()
    h = w["embed.weight"][tokens]
    for layer in range(config.n_layer):
        p = f"blocks.{layer}."
        x = rms(h, w[p + "attn_norm.weight"])
        q, k, v = (x @ m.T for m in w[p + "attn.qkv.weight"].split(d))
        q, k, v = (t.view(B, T, H, dh) for t in (q, k, v))
        q, k = _rope(q, config.rope_base), _rope(k, config.rope_base)
        scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(dh)
        probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        h = h + torch.einsum("bhts,bshd->bthd", probs, v).reshape(B, T, d) @ w[p + "attn.out.weight"].T
        x = rms(h, w[p + "mlp_norm.weight"])
        u, gate = (x @ m.T for m in w[p + "mlp.up_gate.weight"].split(hidden))
        h = h + (u * gate * torch.sigmoid(gate)) @ w[p + "mlp.down.weight"].T
    return rms(h, w["final_norm.weight"]) @ w["head.weight"].T


def test_gpt_baseline_forward_matches_a_float64_reference():
    """The whole baseline (pre-norm RMSNorm with learned weights, RoPE, softmax scale 1/sqrt(dh), SwiGLU,
    final RMSNorm, untied head) against the equations: measured 2e-7 in fp32, 6e-10 in float64."""
    torch.manual_seed(11)
    config = ModelConfig(arch="gpt", vocab_size=101, n_layer=3, n_embd=64, n_head=4, seq_len=64).validate()
    model = build_model(config)
    with torch.no_grad():  # the norm weights away from 1, so each one matters
        for param in model.parameters():
            if param.dim() == 1:
                param.mul_(1 + 0.5 * torch.randn_like(param))
    weights = {name: param.detach().clone() for name, param in model.named_parameters()}
    tokens = torch.randint(0, 101, (2, 40))
    reference = reference_gpt_logits(weights, config, tokens)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[0].double(), reference, atol=2e-6, rtol=0)
        torch.testing.assert_close(model.double()(tokens)[0], reference, atol=1e-8, rtol=0)


def test_first_logged_loss_of_the_trainer_is_the_reference_loss_of_the_seeded_model(tmp_path, tiny_dataset):
    """2 ranks, ZeRO 2, fp32, 2 micro-batches of 2 per rank: the loss logged for step 1 is the mean, over
    the 4 windows the ranks read, of the paper's equations applied to the model built from train.seed
    (measured 1.7e-7). Everything between the model and the log (engine, accumulation, the mean over
    ranks, the renormalization before step 0) leaves the numbers alone."""
    model = tiny_ngpt()
    config = write_yaml(tmp_path / "tiny.yaml", model, tiny_train(1))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=2, accum=2)
    torchrun(*train_cmd(config, ds, tiny_dataset, tmp_path / "out"))
    logged = read_metrics(tmp_path / "out")[0]
    assert logged["step"] == 1

    vocab = json.loads((tiny_dataset / "meta.json").read_text())["vocab_size"]
    model_config = ModelConfig(**model, vocab_size=vocab).validate()
    torch.manual_seed(1234)  # TrainConfig.seed's default
    weights = {name: p.detach().clone() for name, p in build_model(model_config).named_parameters()}
    losses = []
    for rank in range(2):
        loader = TokenWindowLoader(tiny_dataset, "train", model_config.seq_len, 2, rank, 2, 1234, grad_accum=2)
        for _ in range(2):
            inputs, targets = (torch.as_tensor(t) for t in loader.next_batch())
            for row in range(inputs.shape[0]):
                logits = naive_ngpt_logits(weights, model_config, inputs[row].tolist())
                losses.append(F.cross_entropy(logits, targets[row], ignore_index=-1).item())
    assert abs(logged["train/loss"] - sum(losses) / len(losses)) < 1e-6
