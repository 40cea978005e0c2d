"""A crafted model folder cannot make the inference loaders read an unbounded config file.

Fault: ngpt_ds.infer read a checkpoint's config.yaml (read_run_config) and an export's config.json
(read_export_config, and the probes that ask whether a folder is an export) whole, then parsed them: PyYAML took
36 s and 740 MiB on an 11 MiB config.yaml, and a sparse file (a few bytes in an archive kept with its holes) was
read whole into memory whatever its size. They are now read no further than 1 MiB, as the trainer reads config
files (ngpt_ds.model.config.MAX_CONFIG_FILE_BYTES), and a larger one is one error naming the file and its size.
"""

from __future__ import annotations

import json

import pytest

import ngpt_ds.infer
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.infer.export_config import MAX_CONFIG_JSON_BYTES, read_export_config
from ngpt_ds.infer.run_checkpoint import read_run_config, resolve_checkpoint
from ngpt_ds.model.config import MAX_CONFIG_FILE_BYTES

MODEL = "model: {arch: ngpt, vocab_size: 64, d_model: 32, n_layer: 1, n_head: 2}\n"


def sized_yaml(size: int) -> str:
    """A valid run config of exactly `size` bytes: the model section and a comment to fill the rest."""
    filler = size - len(MODEL) - 2
    return MODEL + "#" + "x" * filler + "\n"


def _sized_export_config(size: int) -> str:
    """An export config.json of exactly `size` bytes (format marker, version, a padding field)."""
    head = '{"format": "ngpt_ds-export", "format_version": 1, "pad": "'
    return head + "x" * (size - len(head) - 2) + '"}'


def test_a_checkpoint_config_yaml_over_the_cap_is_refused_unread(tmp_path):
    (tmp_path / "config.yaml").write_text(sized_yaml(MAX_CONFIG_FILE_BYTES + 1), encoding="utf-8")
    with pytest.raises(NgptConfigError) as caught:
        read_run_config(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'config.yaml'} holds {MAX_CONFIG_FILE_BYTES + 1} bytes: ")
    assert f"at most {MAX_CONFIG_FILE_BYTES} bytes" in message


def test_a_checkpoint_config_yaml_of_the_cap_is_read(tmp_path):
    (tmp_path / "config.yaml").write_text(sized_yaml(MAX_CONFIG_FILE_BYTES), encoding="utf-8")
    assert (tmp_path / "config.yaml").stat().st_size == MAX_CONFIG_FILE_BYTES
    run = read_run_config(tmp_path)
    assert run["model"] == {"arch": "ngpt", "vocab_size": 64, "d_model": 32, "n_layer": 1, "n_head": 2}


def test_an_export_config_json_over_the_cap_is_refused_by_every_reader(tmp_path):
    (tmp_path / "config.json").write_text(_sized_export_config(MAX_CONFIG_JSON_BYTES + 1), encoding="utf-8")
    (tmp_path / "model.safetensors").write_bytes(b"")
    expected = f"{tmp_path / 'config.json'} holds {MAX_CONFIG_JSON_BYTES + 1} bytes: "
    with pytest.raises(NgptConfigError) as caught:
        read_export_config(tmp_path)
    assert str(caught.value).startswith(expected)
    with pytest.raises(NgptConfigError) as caught:  # the public loader, as generate.py and evaluate.py call it
        ngpt_ds.infer.load(tmp_path)
    assert str(caught.value).startswith(expected)


def test_an_export_config_json_of_the_cap_is_read(tmp_path):
    (tmp_path / "config.json").write_text(_sized_export_config(MAX_CONFIG_JSON_BYTES), encoding="utf-8")
    assert (tmp_path / "config.json").stat().st_size == MAX_CONFIG_JSON_BYTES
    config = read_export_config(tmp_path)
    assert (config["format"], config["format_version"], len(config["pad"])) == (
        "ngpt_ds-export",
        1,
        MAX_CONFIG_JSON_BYTES - 60,  # less the 58 bytes before the padding and the 2 after it
    )


def test_the_export_probe_reads_an_oversized_config_json_as_no_export(tmp_path):
    """resolve_checkpoint names a folder with config.json but no weights by the config's format marker; an
    oversized config.json is not read, so the folder is no export (the generic message, not the 'copied in part')."""
    (tmp_path / "config.json").write_text(_sized_export_config(MAX_CONFIG_JSON_BYTES + 1), encoding="utf-8")
    with pytest.raises(NgptConfigError, match="is neither an exported model"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "ngpt_ds-export"}), encoding="utf-8")
    with pytest.raises(NgptConfigError, match="is an exported model without its weights"):
        resolve_checkpoint(tmp_path)
