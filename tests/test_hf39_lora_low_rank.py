"""ngpt_ds's sphere LoRA forward without forming W + BA (ngpt_ds/hf/lora_low_rank.py).

Fault: SphereLoraProjection's forward formed Norm(W + BA) whole for every adapted projection in every forward, and
autograd kept three full matrices per layer for the backward (W + BA, its normalization, the row-scaled copy):
bench/lora_memory.py measured a peak 3.45x that of PEFT's plain LoRA on the GPT baseline (d 1024, 4 layers), 3.1x
that of the low-rank form. Now the forward computes the same function from products with one side r, and keeps
what plain LoRA keeps (x and x A^T); merge still writes Norm(W + BA) whole."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")
pytest.importorskip("peft", reason="PEFT is not installed: pip install peft (launch/setup.sh --test installs it)")

TARGETS = ["qkv", "out", "up_gate", "down", "head"]  # both layouts, and the head's s_z (row_scale)


def _peft_model(dtype=torch.float32, adapters=("default",)):
    from peft import LoraConfig, get_peft_model

    from ngpt_ds.hf.configuration_ngpt import CONFIGS
    from ngpt_ds.hf.lora import sphere_lora
    from ngpt_ds.hf.modeling_ngpt import MODELS
    from ngpt_ds.model import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    model = MODELS["ngpt"](CONFIGS["ngpt"].from_model_config(config)).to(dtype)
    peft_model = get_peft_model(model, sphere_lora(LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS)), adapters[0])
    for name in adapters[1:]:
        peft_model.add_adapter(name, sphere_lora(LoraConfig(r=3, lora_alpha=5, target_modules=TARGETS)))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)  # W + BA well off the sphere, so the normalization matters
    return peft_model


def _forward_backward(peft_model, ids, whole: bool, monkeypatch, autocast: bool = False):
    """(logits, {trainable parameter: gradient}) of one loss.backward() in the whole-matrix or low-rank form."""
    from ngpt_ds.hf.lora import SphereLoraProjection

    monkeypatch.setattr(SphereLoraProjection, "whole_matrix", whole, raising=False)
    peft_model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = peft_model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in peft_model.named_parameters() if p.requires_grad}
    return out.logits.detach().float(), grads


IDS = torch.randint(0, 512, (3, 16), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_low_rank_form_equals_the_whole_matrix(dtype, monkeypatch):
    """Logits and the gradients of every A and B: float32 within 1e-6 (float64 within 1e-12) of Norm(W + BA) formed
    whole, the adapted matrices well off the sphere before normalization (so a missing normalization shows)."""
    peft_model = _peft_model(dtype)
    whole, whole_grads = _forward_backward(peft_model, IDS, True, monkeypatch)
    low, low_grads = _forward_backward(peft_model, IDS, False, monkeypatch)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert whole.abs().max() > 0.1 and (low - whole).abs().max() < tol
    assert len(low_grads) == 18  # A and B of 4 projections x 2 blocks, and of the head
    for name, grad in whole_grads.items():
        assert grad.abs().max() > 1e-4, name  # every adapter is in the loss
        assert (low_grads[name] - grad).abs().max() < tol, name
    # The check can fail: without the normalization (plain W + BA) the logits differ by far more.
    qkv = peft_model.base_model.model.model.blocks[0].attn.qkv
    adapted = qkv.get_base_layer().weight + qkv.get_delta_weight("default")
    assert (torch.linalg.vector_norm(adapted, dim=1) - 1).abs().max() > 0.1


def test_two_active_adapters_and_a_trained_base_matrix(monkeypatch):
    """Two adapters active at once (their deltas summed inside one Norm) and a projection whose W also trains: the
    same logits and gradients (W's included) as the whole-matrix form, float64 within 1e-12."""
    peft_model = _peft_model(torch.float64, adapters=("a", "b"))
    peft_model.base_model.set_adapter(["a", "b"])
    down = peft_model.base_model.model.model.blocks[1].mlp.down.get_base_layer()
    head = peft_model.base_model.model.model.head.get_base_layer()
    down.weight.requires_grad_(True)
    head.weight.requires_grad_(True)
    whole, whole_grads = _forward_backward(peft_model, IDS, True, monkeypatch)
    low, low_grads = _forward_backward(peft_model, IDS, False, monkeypatch)
    assert (low - whole).abs().max() < 1e-12
    assert len(whole_grads) == 38 and any(".b.weight" in name for name in whole_grads)  # 2 x 18 adapters, 2 W
    for name, grad in whole_grads.items():
        assert grad.abs().max() > 1e-6, name
        assert (low_grads[name] - grad).abs().max() < 1e-12, name


def test_bf16_autocast_within_a_stated_tolerance(monkeypatch):
    """Under bf16 autocast (Trainer's bf16=True) both forms run their products in bf16 and round differently. Against
    float32 (the whole-matrix form without autocast): the low-rank form's logits within 1e-2 (of values up to ~1),
    each gradient within 3% of the float32 one's largest entry, and on average no more than 1.5 times the
    whole-matrix form's own bf16 error (measured: 1.0% against 0.9%)."""
    peft_model = _peft_model()
    reference, reference_grads = _forward_backward(peft_model, IDS, True, monkeypatch)
    whole, whole_grads = _forward_backward(peft_model, IDS, True, monkeypatch, autocast=True)
    low, low_grads = _forward_backward(peft_model, IDS, False, monkeypatch, autocast=True)
    assert (low - reference).abs().max() < 1e-2 and (whole - reference).abs().max() < 1e-2
    low_errors, whole_errors = [], []
    for name, grad in reference_grads.items():
        assert low_grads[name].dtype == torch.float32
        largest = grad.abs().max()
        low_errors.append(((low_grads[name] - grad).abs().max() / largest).item())
        whole_errors.append(((whole_grads[name] - grad).abs().max() / largest).item())
        assert low_errors[-1] < 3e-2, name
    assert sum(low_errors) < 1.5 * sum(whole_errors)


def test_bf16_weights_within_a_stated_tolerance(monkeypatch, hf_saved):
    """An nGPT loaded with dtype=torch.bfloat16 (PEFT keeps its adapters in float32): the low-rank form runs its
    products in bf16 as the whole-matrix form does (that form casts Norm(W + BA) to bf16); logits within 1.6e-2 of it
    and each adapter gradient within 4% of its largest entry (measured: 5.9e-3 and 1.9%)."""
    from peft import LoraConfig, get_peft_model

    from ngpt_ds.hf.lora import sphere_lora
    from ngpt_ds.hf.modeling_ngpt import NGPTForCausalLM

    model = NGPTForCausalLM.from_pretrained(hf_saved["ngpt"], dtype=torch.bfloat16)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, sphere_lora(LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS)))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                assert p.dtype == torch.float32
                p.normal_(std=0.3)
    whole, whole_grads = _forward_backward(peft_model, IDS, True, monkeypatch)
    low, low_grads = _forward_backward(peft_model, IDS, False, monkeypatch)
    assert (low - whole).abs().max() < 1.6e-2
    for name, grad in whole_grads.items():
        assert low_grads[name].dtype == torch.float32
        assert (low_grads[name] - grad).abs().max() < 4e-2 * grad.abs().max(), name


def _saved_for_backward(module, x, *args) -> list[torch.Tensor]:
    """The tensors autograd keeps from module(x, *args), parameters (kept by reference) left out."""
    params = {p.data_ptr() for p in module.parameters()}
    kept: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x, *args)
    return kept


@pytest.mark.parametrize(
    ("path", "matrix", "whole_kept"), [("blocks.0.attn.qkv", (96, 32), 3), ("blocks.0.mlp.down", (32, 128), 2)]
)
def test_the_backward_keeps_no_full_matrix(path, matrix, whole_kept, monkeypatch):
    """The old forward kept full [out, in] matrices for the backward (W + BA, Norm(W + BA) and, where scaled_linear
    folds the row scale in, the scaled copy: 3 for q/k/v here, 2 for MLP down); the low-rank form keeps x and
    otherwise only tensors with a side of r = 4 or vectors, for q/k/v (unit rows, under a row scale) and MLP down
    (unit columns)."""
    from ngpt_ds.hf.lora import SphereLoraProjection

    layer = _peft_model().base_model.model.model.get_submodule(path)
    assert isinstance(layer, SphereLoraProjection)
    x = torch.randn(2, 40, matrix[1], requires_grad=True)  # 80 tokens: more than q/k/v's 32 inputs (folded scale)
    scale = (torch.rand(matrix[0]) + 0.5).requires_grad_()  # as s_u, s_v: trained

    def full_matrices(kept: list[torch.Tensor]) -> int:
        storages = {t.untyped_storage().data_ptr() for t in kept if t.numel() == matrix[0] * matrix[1]}
        return len(storages)

    monkeypatch.setattr(SphereLoraProjection, "whole_matrix", True, raising=False)
    assert full_matrices(_saved_for_backward(layer, x, scale)) == whole_kept
    monkeypatch.setattr(SphereLoraProjection, "whole_matrix", False, raising=False)
    kept = _saved_for_backward(layer, x, scale)
    assert full_matrices(kept) == 0
    assert any(t is x for t in kept) and any(t.shape == (2, 40, 4) for t in kept)  # x and x A^T, as plain LoRA
    others = [tuple(t.shape) for t in kept if t is not x]
    assert all(len(shape) == 1 or min(shape) <= 4 for shape in others), others
