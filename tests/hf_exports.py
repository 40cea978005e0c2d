"""Hugging Face folders the tests of loading them alter: the `--format hf` export of a random tiny nGPT
(tests/random_export.py) and a fresh copy of it for each test, the save_pretrained folders of a random tiny model of
each family, a copy with one config.json field edited, and the export's config class reading a folder as lm-eval and
from_pretrained read it first.

tests/conftest.py registers the fixtures (random_hf_export, hf_export_copy, hf_saved) for every test module."""

import json
import shutil
from pathlib import Path

import pytest

FIX = "copy the whole folder again, or export the checkpoint again"
"""How the refusal of a tokenizer file of an export ends (ngpt_ds.model.saved_weights.check_tokenizer_files)."""


@pytest.fixture(scope="session")
def random_hf_export_logits(tmp_path_factory, tiny_dataset):
    """random_hf_export's folder and the native model's logits on random_export.TOKENS, [8, 512]: read only."""
    from random_export import export_random_ngpt

    return export_random_ngpt(tmp_path_factory.mktemp("random_hf_export"), tiny_dataset / "tokenizer.model", "hf")


@pytest.fixture(scope="session")
def random_hf_export(random_hf_export_logits) -> Path:
    """A random tiny nGPT exported with `--format hf` and the tiny dataset's tokenizer: read only (hf_export_copy gives a
    test a copy to alter)."""
    return random_hf_export_logits[0]


@pytest.fixture
def hf_export_copy(random_hf_export, tmp_path) -> Path:
    """A copy of random_hf_export of the test's own, tmp_path/export, to alter."""
    copy = tmp_path / "export"
    shutil.copytree(random_hf_export, copy)
    return copy


@pytest.fixture(scope="session")
def hf_saved(tmp_path_factory) -> dict[str, Path]:
    """A random tiny model of each family ("ngpt", "gpt": seed 0, vocab 512, 2 blocks of width 32), written by
    save_pretrained (config.json, model.safetensors): read only, a test copies the folder it alters."""
    import torch

    from ngpt_ds.hf.configuration_ngpt import CONFIGS
    from ngpt_ds.hf.modeling_ngpt import MODELS
    from ngpt_ds.model import ModelConfig

    root = tmp_path_factory.mktemp("hf_saved")
    folders = {}
    for arch in ("ngpt", "gpt"):
        torch.manual_seed(0)
        config = ModelConfig(arch=arch, vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
        MODELS[arch](CONFIGS[arch].from_model_config(config)).save_pretrained(root / arch)
        folders[arch] = root / arch
    return folders


def auto_config(folder: Path):
    """transformers' AutoConfig.from_pretrained(folder), with ngpt_ds imported: the export's config class reads it."""
    from transformers import AutoConfig

    import ngpt_ds  # noqa: F401  (registers the config class)

    return AutoConfig.from_pretrained(str(folder))


def edited_copy(folder: Path, tmp_path: Path, field: str, value, *, alias: str | None = None) -> Path:
    """A copy of the hf folder, tmp_path/edited_<name>, whose config.json has `field` = value (under transformers' name
    `alias` if given, in place of `field`)."""
    copy = tmp_path / f"edited_{alias or field}"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    if alias:
        del config[field]
    config[alias or field] = value
    (copy / "config.json").write_text(json.dumps(config, indent=2))
    return copy
