"""Fault: `--config ngpt_tiny.yaml` (the preset's file name, as the README shows the presets' folder) from a folder
without such a file said "config file ngpt_tiny.yaml does not exist. Give a YAML file or one of the presets:
gpt_0.5b, ..., ngpt_tiny": the preset it meant was in the list, but not that dropping `.yaml` selects it. Now
the message names `--config ngpt_tiny`. A name that is no preset keeps the old message."""

from __future__ import annotations

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.config import preset_names, resolve_config_path


def test_a_presets_file_name_points_to_the_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NgptConfigError) as err:
        resolve_config_path("ngpt_tiny.yaml")
    assert str(err.value) == (
        "config file ngpt_tiny.yaml does not exist here; the preset of that name is --config ngpt_tiny (without .yaml)"
    )


def test_a_file_that_is_no_preset_keeps_the_list(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NgptConfigError) as err:
        resolve_config_path("mine.yaml")
    assert str(err.value) == (
        f"config file mine.yaml does not exist. Give a YAML file or one of the presets: {', '.join(preset_names())}"
    )


def test_a_file_of_that_name_here_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ngpt_tiny.yaml").write_text("model: {}\n")
    assert resolve_config_path("ngpt_tiny.yaml") == tmp_path.joinpath("ngpt_tiny.yaml").relative_to(tmp_path)
