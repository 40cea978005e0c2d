"""What a user of PEFT's LoRA on an nGPT does after training, untested before (tests/test_hf38_peft_lora.py covers
Trainer, save_pretrained of the adapter, load_sphere_lora and merge_and_unload): generate with the adapted model (the
KV cache's one-token steps through the sphere LoRA layer), and score it with lm-eval's `hf` model, adapted in memory
and as its merged folder. Not a fault: guards what held when checked; and lm-eval's own `peft=ADAPTER` option, which
calls PEFT's plain PeftModel.from_pretrained, stops in PEFT's refusal of the module type (the adapter's
adapter_config.json cannot hold sphere_lora's registration): merge first, as the README says."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")
pytest.importorskip("peft", reason="PEFT is not installed: pip install peft (launch/setup.sh --test installs it)")

import ngpt_ds  # noqa: F401, E402  registers the families with the Auto classes

TARGETS = ["qkv", "out", "up_gate", "down"]


def _adapted(folder):
    """(base model from `folder`, the same model with sphere LoRA whose B are drawn so that the adapters matter)."""
    from peft import LoraConfig, get_peft_model

    from ngpt_ds.hf.lora import sphere_lora
    from ngpt_ds.hf.modeling_ngpt import NGPTForCausalLM

    base = NGPTForCausalLM.from_pretrained(folder).eval()
    torch.manual_seed(3)
    peft_model = get_peft_model(
        NGPTForCausalLM.from_pretrained(folder), sphere_lora(LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    return base, peft_model.eval()


def test_generate_with_a_lora_model_is_the_merged_models(hf_saved, tmp_path):
    """Greedy generate (KV cache, a left-padded batch) of the adapted model, of it saved and loaded again
    (load_sphere_lora), and of its merged model saved by save_pretrained and loaded again: the same tokens, which are
    not the base model's."""
    from ngpt_ds.hf.lora import load_sphere_lora
    from ngpt_ds.hf.modeling_ngpt import NGPTForCausalLM

    base, peft_model = _adapted(hf_saved["ngpt"])
    ids = torch.tensor([[0, 0, 5, 17, 42], [3, 250, 7, 11, 99]])  # 0 is no special id here: the mask says padding
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    settings = {"attention_mask": mask, "max_new_tokens": 10, "do_sample": False, "pad_token_id": 0}
    adapted = peft_model.generate(input_ids=ids, **settings)
    assert adapted.shape == (2, 15)
    assert not torch.equal(adapted, base.generate(input_ids=ids, **settings))
    with torch.no_grad():  # the cache's steps agree with one uncached forward over the generated tokens
        full = peft_model(input_ids=adapted[1:, :-1]).logits.argmax(-1)
    assert torch.equal(full[0, 4:], adapted[1, 5:])

    peft_model.save_pretrained(tmp_path / "adapter")
    loaded = load_sphere_lora(NGPTForCausalLM.from_pretrained(hf_saved["ngpt"]), tmp_path / "adapter").eval()
    assert torch.equal(loaded.generate(input_ids=ids, **settings), adapted)
    loaded.merge_and_unload().save_pretrained(tmp_path / "merged")
    merged = NGPTForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert torch.equal(merged.generate(input_ids=ids, **settings), adapted)


def test_lm_eval_scores_the_adapted_model_as_its_merged_folder(hf_saved, tiny_dataset, tmp_path):
    """lm-eval's `hf` model on the adapted model in memory (its LoRA layers run in HFLM's batches) and on its merged
    folder (pretrained=FOLDER): the same loglikelihoods to 1e-4 and the same greedy texts, which differ from the base
    model's. `peft=ADAPTER` on the base folder is PEFT's refusal, as the module docstring says."""
    pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install -e .[eval]")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from ngpt_ds.hf.tokenizer import build_hf_tokenizer

    tokenizer = build_hf_tokenizer(tiny_dataset / "tokenizer.model")
    base, peft_model = _adapted(hf_saved["ngpt"])
    peft_model.save_pretrained(tmp_path / "adapter")
    requests = [("Question: what is it?", " the answer"), ("The class statement", " defines a class")]
    gen = {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": False}

    def scores(pretrained) -> tuple[list, list]:
        lm = HFLM(pretrained=pretrained, tokenizer=tokenizer, batch_size=2, device="cpu", max_length=32)
        loglikelihood = lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)])
        texts = lm.generate_until([Instance("generate_until", {}, (r[0], gen), i) for i, r in enumerate(requests)])
        return [score for score, _ in loglikelihood], texts

    adapted = scores(peft_model.base_model.model)  # the NGPTForCausalLM holding the LoRA layers
    peft_model.merge_and_unload().save_pretrained(tmp_path / "merged")
    merged = scores(str(tmp_path / "merged"))
    assert merged[0] == pytest.approx(adapted[0], abs=1e-4, rel=0) and merged[1] == adapted[1]
    base_scores = scores(base)
    # a random model is near uniform (about -31 here): the adapters move each score by 9e-3 or more
    assert all(abs(a - b) > 5e-3 for a, b in zip(adapted[0], base_scores[0], strict=True))
    assert adapted[1] != base_scores[1]

    with pytest.raises(ValueError, match=r"Target module Projection\(in=32, out=96, style=column, on_sphere=True\)"):
        HFLM(pretrained=str(hf_saved["ngpt"]), peft=str(tmp_path / "adapter"), tokenizer=tokenizer, device="cpu")


def test_activation_checkpointing_through_the_peft_model_gives_the_same_gradients(hf_saved):
    """Trainer's gradient_checkpointing=True calls gradient_checkpointing_enable on the PeftModel: ngpt_ds's
    checkpoint then recomputes each block, sphere LoRA layers included, with every adapter gradient bit for bit."""
    _, peft_model = _adapted(hf_saved["ngpt"])
    ids = torch.randint(0, 512, (3, 16), generator=torch.Generator().manual_seed(1))
    calls = []
    peft_model.base_model.model.model.blocks[1].mlp.down.register_forward_hook(lambda *_: calls.append(1))

    def gradients() -> dict[str, torch.Tensor]:
        peft_model.zero_grad(set_to_none=True)
        peft_model.train()
        peft_model(input_ids=ids, labels=ids).loss.backward()
        return {name: p.grad.clone() for name, p in peft_model.named_parameters() if p.requires_grad}

    plain = gradients()
    assert len(calls) == 1
    peft_model.gradient_checkpointing_enable()
    assert peft_model.base_model.model.is_activation_checkpointing
    checkpointed = gradients()
    assert len(calls) == 3  # the block's forward, and its recomputation in the backward
    assert len(plain) == 16 and plain.keys() == checkpointed.keys()
    assert all(torch.equal(plain[name], checkpointed[name]) and plain[name].abs().max() > 0 for name in plain)
