"""device_map="auto" (or "sequential", "balanced") keeps each block of the HF models on one device."""

import pytest

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        (
            "ngpt",
            {"model.rotary": 0, "model.embed": 1, "model.blocks": 1, "model.head": 1, "model.s_z": 1},
        ),
        (
            "gpt",
            {"model.rotary": 0, "model.embed": 1, "model.blocks": 1, "model.final_norm": 1, "model.head": 1},
        ),
    ],
)
def test_device_map_auto_keeps_each_block_on_one_device(arch, expected):
    """Fault: the HF models had no _no_split_modules, so transformers' device_map (its _get_device_map, what
    from_pretrained(device_map="auto"/"sequential") computes from max_memory) cut a block between devices.
    Before (2 layers, d 64, device 0 given 45 % of the weights): model.blocks.0.attn on 0, model.blocks.0.mlp and
    its alphas on 1; the block's update (eq. 10; the GPT's residual add) would mix tensors of two devices. Now:
    every block is placed whole."""
    from transformers.integrations.accelerate import _get_device_map

    from ngpt_ds.hf.configuration_ngpt import CONFIGS
    from ngpt_ds.hf.modeling_ngpt import MODELS
    from ngpt_ds.model import ModelConfig

    config = ModelConfig(arch=arch, vocab_size=512, n_layer=2, n_embd=64, n_head=4, seq_len=64)
    model = MODELS[arch](CONFIGS[arch].from_model_config(config))
    total = sum(p.numel() * 4 for p in model.parameters())
    placed = _get_device_map(model, "sequential", {0: int(total * 0.45), 1: total * 4, "cpu": total * 4}, None)
    assert dict(placed) == expected
