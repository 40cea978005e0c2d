"""The `--format hf` export that the tests of its tokenizer files alter: a random tiny nGPT (tests/random_export.py)
exported once per session, a fresh copy of it for each test, and the export's config class reading a folder as
lm-eval and from_pretrained read it first.

tests/conftest.py registers the fixtures (hf_export, hf_folder) for every test module."""

import shutil
from pathlib import Path

import pytest

FIX = "copy the whole folder again, or export the checkpoint again"
"""How the refusal of a tokenizer file of an export ends (ngpt_ds.model.saved_weights.check_tokenizer_files)."""


@pytest.fixture(scope="session")
def hf_export(tmp_path_factory, tiny_dataset) -> Path:
    """A random tiny nGPT exported with `--format hf` and the tiny dataset's tokenizer: read only (hf_folder gives a
    test a copy to alter)."""
    from random_export import export_random_ngpt

    folder, _ = export_random_ngpt(tmp_path_factory.mktemp("hf_export"), tiny_dataset / "tokenizer.model", "hf")
    return folder


@pytest.fixture
def hf_folder(hf_export, tmp_path) -> Path:
    """A copy of hf_export of the test's own, tmp_path/export, to alter."""
    copy = tmp_path / "export"
    shutil.copytree(hf_export, copy)
    return copy


def auto_config(folder: Path):
    """transformers' AutoConfig.from_pretrained(folder), with ngpt_ds imported: the export's config class reads it."""
    from transformers import AutoConfig

    import ngpt_ds  # noqa: F401  (registers the config class)

    return AutoConfig.from_pretrained(str(folder))
