"""Head pruning of the transformers classes (ngpt_ds/hf/modeling_ngpt.py: prune_heads).

Fault: `model.prune_heads({0: [1]})` stopped in "AttributeError: 'NGPTForCausalLM' object has no attribute
'prune_heads'" (transformers 5 removed the method), and transformers' own helper on a projection,
`prune_linear_layer(model.model.blocks[0].attn.qkv, index)`, in "'Projection' object has no attribute 'bias'": neither
says what holds. Pruning is refused in one line: every block has config.json's one n_head, which from_pretrained checks
the weights against, so a pruned model could not be loaded again. The weights are left as they were."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")


@pytest.mark.parametrize(("arch", "name"), [("ngpt", "NGPTForCausalLM"), ("gpt", "GPTBaselineForCausalLM")])
def test_prune_heads_is_refused_in_one_line(arch, name):
    """On the old code: AttributeError: '<name>' object has no attribute 'prune_heads'."""
    from ngpt_ds.hf.configuration_ngpt import CONFIGS
    from ngpt_ds.hf.modeling_ngpt import BASE_MODELS, MODELS
    from ngpt_ds.model import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(arch=arch, vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    for cls in (MODELS[arch], BASE_MODELS[arch]):
        model = cls(CONFIGS[arch].from_model_config(config))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        line = (
            rf"^{cls.__name__} cannot prune attention heads \(\{{0: \[1\]\}}\): every block has the config's n_head "
            r"\(2\), which from_pretrained checks the weights against. Train or fine-tune a model with fewer heads "
            r"\(n_head in the model YAML\) instead$"
        )
        with pytest.raises(NotImplementedError, match=line):
            model.prune_heads({0: [1]})
        after = model.state_dict()
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert MODELS[arch].__name__ == name
