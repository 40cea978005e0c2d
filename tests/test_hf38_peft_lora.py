"""PEFT's LoRA on ngpt_ds's transformers models (ngpt_ds/hf/lora.py).

Fault: `get_peft_model(model, LoraConfig(target_modules=["qkv", "out", "up_gate", "down"]))` stopped in PEFT's
"ValueError: Target module Projection(in=32, out=96, style=column, on_sphere=True) is not supported": ngpt_ds's
projections are no torch.nn.Linear. And a plain LoRA merge (W + BA) would have left nGPT's matrices off the sphere
(the paper keeps them unit norm; from_pretrained refuses them off it). Now `sphere_lora(LoraConfig(...))` adapts
them as Norm(W + BA): training with transformers' Trainer, save_pretrained, load_sphere_lora and merge_and_unload give
the same logits, and the merged nGPT's matrices are unit norm and load again."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")
pytest.importorskip("peft", reason="PEFT is not installed: pip install peft (launch/setup.sh --test installs it)")

TARGETS = ["qkv", "out", "up_gate", "down"]


def _model(arch: str):
    from ngpt_ds.hf.configuration_ngpt import CONFIGS
    from ngpt_ds.hf.modeling_ngpt import MODELS
    from ngpt_ds.model import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(arch=arch, vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    return MODELS[arch](CONFIGS[arch].from_model_config(config))


def _train(peft_model, ids: torch.Tensor, out) -> None:
    """Four Trainer steps on CPU over `ids` (labels = inputs), at a learning rate that moves the adapters."""
    from transformers import Trainer, TrainingArguments

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(ids)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": ids[i], "labels": ids[i]}

    args = TrainingArguments(
        output_dir=str(out), max_steps=4, per_device_train_batch_size=4, learning_rate=3e-2, lr_scheduler_type="constant",
        report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    Trainer(model=peft_model, args=args, train_dataset=Rows()).train()


def test_plain_lora_config_is_refused_by_peft_itself():
    """What a user gets without sphere_lora: PEFT's own refusal of the module type (the fault's line)."""
    from peft import LoraConfig, get_peft_model

    with pytest.raises(ValueError, match=r"Target module Projection\(in=32, out=96, style=column, on_sphere=True\)"):
        get_peft_model(_model("ngpt"), LoraConfig(r=4, target_modules=TARGETS))


def test_ngpt_lora_trains_saves_loads_and_merges_on_the_sphere(tmp_path):
    """On the old code ngpt_ds.hf.lora did not exist (ModuleNotFoundError) and get_peft_model refused the model.
    Now: B = 0 at init gives the base model's logits; four Trainer steps move only the adapters (the frozen nGPT
    matrices bit for bit as they were: the renormalization hook leaves what no optimizer holds); the adapter saved
    and loaded gives the same logits; merge_and_unload writes Norm(W + BA), unit norm to 1e-6, where W + BA is
    more than 1e-3 off; the merged model's logits are the adapted model's and it loads again through from_pretrained
    (which refuses matrices off the sphere)."""
    from peft import LoraConfig, get_peft_model

    from ngpt_ds.hf.lora import SphereLoraProjection, load_sphere_lora, sphere_lora
    from ngpt_ds.hf.modeling_ngpt import NGPTForCausalLM
    from ngpt_ds.model.sphere import max_norm_deviation, norm_deviation, sphere_matrices

    ids = torch.randint(0, 512, (8, 16), generator=torch.Generator().manual_seed(1))
    model = _model("ngpt")
    frozen = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        base_logits = model(ids).logits
    config = sphere_lora(LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    peft_model = get_peft_model(model, config)
    layers = [m for m in peft_model.modules() if isinstance(m, SphereLoraProjection)]
    assert len(layers) == 8  # 4 projections x 2 blocks
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == 5120
    with torch.no_grad():
        assert (peft_model(ids).logits - base_logits).abs().max() < 1e-5

    _train(peft_model, ids, tmp_path / "trainer")
    for name, p in peft_model.base_model.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, frozen[name.replace(".base_layer", "")]), name
    with torch.no_grad():
        adapted = peft_model(ids).logits
    assert (adapted - base_logits).abs().max() > 1e-2  # the adapters moved the model

    # What a plain LoRA merge would have written: W + BA, off the sphere.
    qkv = layers[0]
    plain = qkv.get_base_layer().weight + qkv.get_delta_weight("default")
    assert norm_deviation(plain.detach(), dim := qkv.get_base_layer().layout.norm_dim) > 1e-3 and dim == 1

    peft_model.save_pretrained(tmp_path / "adapter")
    loaded = load_sphere_lora(_model("ngpt"), tmp_path / "adapter")
    with torch.no_grad():
        assert (loaded(ids).logits - adapted).abs().max() < 1e-6
    merged = loaded.merge_and_unload()
    assert type(merged) is NGPTForCausalLM
    assert max_norm_deviation(merged.model) < 1e-6
    assert len(sphere_matrices(merged.model)) == 10  # 4 per block, the embedding and the head
    with torch.no_grad():
        assert (merged(ids).logits - adapted).abs().max() < 1e-5
    merged.save_pretrained(tmp_path / "merged")
    again = NGPTForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        assert (again(ids).logits - adapted).abs().max() < 1e-5


def test_merge_then_unmerge_restores_the_base_matrices():
    """unmerge undoes Norm(W + BA) with the norms the merge divided by: W again to float32 rounding."""
    from peft import LoraConfig, get_peft_model

    from ngpt_ds.hf.lora import sphere_lora

    model = _model("ngpt")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    peft_model = get_peft_model(model, sphere_lora(LoraConfig(r=4, target_modules=TARGETS + ["head"])))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        adapted = peft_model(ids).logits  # the head's LoRA runs under s_z (row_scale)
        peft_model.merge_adapter()
        assert (peft_model(ids).logits - adapted).abs().max() < 1e-4
        peft_model.unmerge_adapter()
        assert (peft_model(ids).logits - adapted).abs().max() < 1e-4
    for name, p in peft_model.base_model.model.named_parameters():
        if "lora_" not in name:
            assert (p - before[name.replace(".base_layer", "")]).abs().max() < 1e-5, name


@pytest.mark.parametrize(
    ("option", "line"),
    [
        ({"lora_dropout": 0.05}, "lora_dropout=0.05 cannot be used on nGPT: .* Pass lora_dropout=0"),
        ({"use_dora": True}, "LoRA variant DoraLinearVariant .* cannot be used on nGPT"),
        ({"lora_bias": True}, "lora_bias=True cannot be used on nGPT: its projections have no bias"),
    ],
)
def test_what_the_sphere_cannot_hold_is_refused_by_name(option, line):
    from peft import LoraConfig, get_peft_model

    from ngpt_ds.hf.lora import sphere_lora

    with pytest.raises(ValueError, match=line):
        get_peft_model(_model("ngpt"), sphere_lora(LoraConfig(r=4, target_modules=TARGETS, **option)))


def test_gpt_baseline_gets_plain_lora():
    """The GPT baseline keeps no sphere: W + BA, dropout allowed; merging keeps the adapted logits."""
    from peft import LoraConfig, get_peft_model

    from ngpt_ds.hf.lora import sphere_lora

    model = _model("gpt")
    peft_model = get_peft_model(model, sphere_lora(LoraConfig(r=4, lora_dropout=0.1, target_modules=TARGETS)))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    peft_model.eval()
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        adapted = peft_model(ids).logits
        qkv = peft_model.base_model.model.model.blocks[0].attn.qkv
        expected = qkv.get_base_layer().weight + qkv.get_delta_weight("default")
        merged = peft_model.merge_and_unload()
        assert torch.allclose(merged.model.blocks[0].attn.qkv.weight, expected, atol=1e-6)
        assert (merged(ids).logits - adapted).abs().max() < 1e-4
