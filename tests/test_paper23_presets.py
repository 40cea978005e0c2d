"""The shipped presets and DeepSpeed configs against the paper's training recipe (Table 3, A.5) and the
official code where the paper is silent: nGPT with Adam (weight decay 0) and no warmup, GPT with weight
decay 0.1 and 2000 warmup steps at the paper's sizes; both with betas (0.9, 0.95), eps 1e-8, a cosine to
0 and a gradient clip of 1.0; Table 2's shapes; the scaling-vector constants left at their defaults."""

import json
import math
from pathlib import Path

import pytest

from ngpt_ds.model.config import preset_names
from ngpt_ds.train.config import load_model_and_train
from ngpt_ds.train.ds_config import gradient_clipping_of

DS_CONFIGS = Path(__file__).resolve().parents[1] / "ds_configs"
TABLE_2 = {"0.5b": (24, 1024, 16), "1b": (36, 1280, 20)}  # n_layers, d_model, n_heads; d_k 64, d_MLP 4d


@pytest.mark.parametrize("name", [n for n in preset_names() if n.startswith("ngpt")])
def test_ngpt_presets_train_with_adam_no_decay_no_warmup_cosine_to_zero(name):
    model, train, _ = load_model_and_train(name)
    assert model.arch == "ngpt"
    assert (train.weight_decay, train.warmup_steps, train.min_lr) == (0.0, 0, 0.0)
    assert tuple(train.betas) == (0.9, 0.95) and train.eps == 1e-8
    # the paper's scaling vectors (§2.5): alpha 0.05, s 1, scales 1/sqrt(d) except s_uv's 1
    d = model.n_embd
    assert (model.alpha_attn_init, model.alpha_mlp_init, model.s_qk_init, model.s_u_init, model.s_v_init) == (
        0.05,
        0.05,
        1.0,
        1.0,
        1.0,
    )
    assert model.s_z_init == 1.0 and model.s_uv_scale == 1.0
    for field in ("alpha_attn_scale", "alpha_mlp_scale", "s_qk_scale", "s_z_scale"):
        assert model.resolved_scale(getattr(model, field)) == pytest.approx(1 / math.sqrt(d), rel=1e-15)
    assert model.rope_base == 10000.0 and model.mlp_width == 4 * d


@pytest.mark.parametrize("size", sorted(TABLE_2))
def test_paper_size_presets_have_table_2_shapes_and_the_baseline_recipe(size):
    for arch in ("ngpt", "gpt"):
        model, train, _ = load_model_and_train(f"{arch}_{size}")
        assert (model.n_layer, model.n_embd, model.n_head) == TABLE_2[size]
        assert model.head_dim == 64 and model.mlp_width == 4 * model.n_embd
        if arch == "gpt":
            assert (train.weight_decay, train.warmup_steps, train.min_lr) == (0.1, 2000, 0.0)
            assert tuple(train.betas) == (0.9, 0.95) and train.eps == 1e-8


@pytest.mark.parametrize("path", sorted(DS_CONFIGS.glob("*.json")), ids=lambda p: p.name)
def test_shipped_deepspeed_configs_clip_the_gradient_norm_at_1(path):
    assert gradient_clipping_of(json.loads(path.read_text())) == 1.0
