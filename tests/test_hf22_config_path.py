"""Errors about a damaged config.json read by NGPTConfig.from_pretrained name that file by its full path: they
named `config.json` without its folder (a bad dtype), or no file at all (a bad model field)."""

from __future__ import annotations

import json
import os

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.hf.configuration_ngpt import NGPTConfig


@pytest.mark.parametrize(
    ("change", "message"),
    [({"dtype": "int8"}, "config.json's dtype = 'int8'"), ({"vocab_size": None}, "model.vocab_size = None")],
)
def test_config_error_names_the_full_path_of_config_json(tmp_path, monkeypatch, change, message):
    folder = tmp_path / "damaged"
    folder.mkdir()
    values = {**NGPTConfig(vocab_size=64).to_dict(), **change}
    (folder / "config.json").write_text(json.dumps(values), encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # loaded by a relative path: the error still names the absolute one
    with pytest.raises(NgptConfigError) as caught:
        NGPTConfig.from_pretrained("damaged").to_model_config()
    text = str(caught.value)
    assert f"NGPTConfig ({folder.resolve()}{os.sep}config.json)" in text
    assert message in text
