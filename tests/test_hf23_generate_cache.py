"""generate() of the HF classes with the KV cache equals generation without it on a left-padded batch, and a cache
passed by hand (past_key_values) continues a padded prefill as the full forward does. Review tests: no fault found;
they pass on the code before them. Also: transformers' activation (gradient) checkpointing switch turns on ngpt_ds's
own checkpointing of every block (it was refused before ngpt_ds/hf/activation_checkpointing.py; the values are
checked in tests/test_eco30_hf_gradient_checkpointing.py)."""

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

NEW = 10


def _model(arch: str):
    from ngpt_ds.hf.configuration_ngpt import CONFIGS
    from ngpt_ds.hf.modeling_ngpt import MODELS
    from ngpt_ds.model import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(arch=arch, vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    return MODELS[arch](CONFIGS[arch].from_model_config(config, eos_token_id=None, pad_token_id=0)).eval()


def _padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 512, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[1, :1] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_cached_generation_of_a_left_padded_batch_equals_uncached_and_each_prompt_alone(arch):
    model = _model(arch)
    ids, mask = _padded_batch()
    kw = dict(max_new_tokens=NEW, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    cached = model.generate(ids, attention_mask=mask, use_cache=True, eos_token_id=None, **kw)
    uncached = model.generate(ids, attention_mask=mask, use_cache=False, eos_token_id=None, **kw)
    assert torch.equal(cached.sequences, uncached.sequences)
    logits = torch.stack(cached.logits)  # [NEW, B, V]
    assert torch.allclose(logits, torch.stack(uncached.logits), rtol=0, atol=1e-5)
    for row in range(3):
        alone = model.generate(ids[row : row + 1, mask[row].bool()], eos_token_id=None, **kw)
        assert torch.equal(alone.sequences[0, -NEW:], cached.sequences[row, -NEW:])
        assert torch.allclose(torch.stack(alone.logits)[:, 0], logits[:, row], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_a_cache_passed_as_past_key_values_continues_a_padded_prefill_as_the_full_forward(arch):
    from transformers import DynamicCache

    model = _model(arch)
    ids, mask = _padded_batch()
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        first = model(ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        nxt = first.logits[:, -1].argmax(-1, keepdim=True)
        longer = torch.cat([mask, torch.ones_like(nxt)], 1)
        step = model(nxt, attention_mask=longer, past_key_values=cache, use_cache=True)
        full = model(torch.cat([ids, nxt], 1), attention_mask=longer, use_cache=False)
    assert cache.get_seq_length() == 8
    assert torch.allclose(step.logits[:, -1], full.logits[:, -1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_transformers_activation_checkpointing_switch_checkpoints_every_block(arch):
    model = _model(arch)
    assert model.supports_gradient_checkpointing is True
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing is True and model.model.checkpoint_every == 1
    model.activation_checkpointing_disable()
    assert model.is_activation_checkpointing is False and model.model.checkpoint_every == 0
