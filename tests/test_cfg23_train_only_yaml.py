"""A YAML with a train: section and no model: section trains ModelConfig's built-in shape: startup says so."""

from __future__ import annotations

import logging

import pytest
import yaml

from ngpt_ds.train.config import load_model_and_train


def _notes(name_or_path: str) -> tuple[list[str], object]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("ngpt_ds.train.config")
    logger.addHandler(handler)
    try:
        model, _train, _path = load_model_and_train(name_or_path)
    finally:
        logger.removeHandler(handler)
    return [f"{r.levelname}: {r.getMessage()}" for r in records], model


@pytest.mark.parametrize("text", ["train: {max_steps: 3}\n", "model:\ntrain: {max_steps: 3}\n", "model: {}\n"])
def test_a_yaml_without_a_model_section_says_which_model_it_trains(tmp_path, text):
    """Fault: `--config only_train.yaml` (train: alone, or an empty model:) trained the built-in ModelConfig
    defaults (ngpt, 4 layers of width 256, context 256: neither ngpt_tiny, whose width is 192, nor any preset)
    without a word, in the effective config as if the file had chosen them. Before: no log record. Now: one
    warning line naming the file, the shape trained and where a model: section to copy is."""
    path = tmp_path / "only_train.yaml"
    path.write_text(text)
    notes, model = _notes(str(path))
    assert (model.arch, model.n_layer, model.n_embd, model.n_head, model.seq_len) == ("ngpt", 4, 256, 4, 256)
    assert notes == [
        f"WARNING: note: {path} has no model: section (or an empty one): training the built-in model defaults "
        "(ngpt, n_layer 4, n_embd 256, n_head 4, seq_len 256), not a preset; add a model: section (the ngpt_tiny "
        "preset's, ngpt_ds/model/presets/ngpt_tiny.yaml, is one to copy) to choose the model"
    ]


def test_the_default_preset_and_a_yaml_with_a_model_section_say_nothing(tmp_path):
    """The main command's default (the ngpt_tiny preset, no --config) and a file with model: stay quiet."""
    notes, model = _notes("ngpt_tiny")
    assert notes == [] and (model.n_layer, model.n_embd) == (4, 192)
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump({"model": {"n_layer": 2, "n_embd": 32, "n_head": 2}, "train": {"max_steps": 3}}))
    notes, model = _notes(str(path))
    assert notes == [] and (model.n_layer, model.n_embd, model.n_head) == (2, 32, 2)
