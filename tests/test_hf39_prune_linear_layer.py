"""transformers' prune_linear_layer on an ngpt_ds projection (ngpt_ds.model.layers.Projection).

Decided: refused, not supported. prune_linear_layer always returns a new torch.nn.Linear, which cannot stand in for a
Projection: it takes no row scale (nGPT's s_u, s_v, s_z: `forward(x, row_scale)`), is no declared sphere matrix (the
renormalization after each step would skip it) and changes a block's n_head, which config.json holds once for every
block (model.prune_heads is refused in one line for that reason: tests/test_hf38_prune_heads.py). So a Projection has
no `bias` and prune_linear_layer stops at its first read of it, in one line, before it builds anything. Not a fault:
guards that it stays so (a `bias = None` on Projection would make it return the unusable Linear silently)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
@pytest.mark.parametrize(("path", "dim"), [("blocks.0.attn.qkv", 0), ("blocks.0.attn.out", 1), ("head", 0)])
def test_prune_linear_layer_on_a_projection_stops_before_building_anything(arch, path, dim):
    from transformers.pytorch_utils import prune_linear_layer

    from ngpt_ds.hf.configuration_ngpt import CONFIGS
    from ngpt_ds.hf.modeling_ngpt import MODELS
    from ngpt_ds.model import ModelConfig
    from ngpt_ds.model.layers import Projection

    torch.manual_seed(0)
    config = ModelConfig(arch=arch, vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    model = MODELS[arch](CONFIGS[arch].from_model_config(config))
    layer = model.model.get_submodule(path)
    assert type(layer) is Projection and not hasattr(layer, "bias")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AttributeError, match=r"^'Projection' object has no attribute 'bias'$"):
        prune_linear_layer(layer, torch.arange(16), dim=dim)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.model.get_submodule(path) is layer
