"""A config field written in the wrong YAML section (cli20 review).

Fault: a train field under model: (`lr`, `max_steps`), a model field under train: (`seq_len`) or a field
not indented under any section was called unknown, as if misspelled, with no word of where it belongs.
Before: "model.lr = 0.001: unknown field Known fields: alpha_attn_init, ..." (every model field, no
separator), "train.seq_len = 64: unknown field", "unknown top-level section(s) lr, max_steps; expected
'model:' and 'train:'". Now: each is named with the section that has it, all in one message."""

from __future__ import annotations

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.config import ModelConfig
from ngpt_ds.train.config import load_model_and_train

MODEL = "model:\n  arch: ngpt\n  n_layer: 2\n  n_embd: 64\n  n_head: 2\n"


def _refusal(tmp_path, text: str) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(NgptConfigError) as err:
        load_model_and_train(str(path))
    return str(err.value).replace(str(path), "exp.yaml")


def test_train_fields_under_model_are_sent_to_train(tmp_path):
    text = MODEL + "  seq_len: 64\n  lr: 0.001\n  max_steps: 50\ntrain:\n  warmup_steps: 0\n"
    assert _refusal(tmp_path, text) == (
        "exp.yaml: 2 problems\n"
        "  - model.lr = 0.001: a train: field, not a model: one; move it under train:\n"
        "  - model.max_steps = 50: a train: field, not a model: one; move it under train:"
    )


def test_a_model_field_under_train_is_sent_to_model(tmp_path):
    assert _refusal(tmp_path, MODEL + "train:\n  seq_len: 64\n  max_steps: 50\n") == (
        "exp.yaml: 1 problem\n  - train.seq_len = 64: a model: field, not a train: one; move it under model:"
    )


def test_fields_left_at_the_top_level_are_named_with_their_section(tmp_path):
    assert _refusal(tmp_path, MODEL + "  seq_len: 64\nmax_steps: 50\nlr: 0.001\nn_layer: 3\n") == (
        "exp.yaml: 3 problems\n"
        "  - lr = 0.001: a train: field written at the top level; indent it under train:\n"
        "  - max_steps = 50: a train: field written at the top level; indent it under train:\n"
        "  - n_layer = 3: a model: field written at the top level; indent it under model:"
    )
    # Not a field of either section: still the unknown section, as before.
    assert _refusal(tmp_path, MODEL + "optim:\n  lr: 0.1\n") == (
        "exp.yaml: unknown top-level section(s) optim; expected 'model:' and 'train:'"
    )


def test_an_unknown_model_field_lists_the_known_ones_apart():
    """The list of known fields followed 'unknown field' without a separator ("unknown field Known fields:")."""
    known = (
        "alpha_attn_init, alpha_attn_scale, alpha_mlp_init, alpha_mlp_scale, arch, init_std, mlp_hidden, n_embd, "
        "n_head, n_layer, norm_eps, rope_base, s_qk_init, s_qk_scale, s_u_init, s_uv_scale, s_v_init, s_z_init, "
        "s_z_scale, seq_len, vocab_size"
    )
    with pytest.raises(NgptConfigError) as err:
        ModelConfig.from_dict({"n_layers": 2, "depth": 3}, source="model config (exp.yaml)")
    assert str(err.value) == (
        "model config (exp.yaml): 2 problems\n"
        f"  - model.depth = 3: unknown field (known fields: {known})\n"
        f"  - model.n_layers = 2: unknown field; did you mean 'n_layer'? (known fields: {known})"
    )
