"""Damaged or crafted metadata files are a clear error naming the file, never a traceback.

Fault: json.loads and yaml.safe_load raise more than their own error types. A number of more than
4300 digits is a plain ValueError (Python's int conversion limit) and nesting thousands deep is a
RecursionError; the readers caught only JSONDecodeError / YAMLError, so a shared checkpoint's
config.yaml, a dataset's meta.json or an export's config.json crafted that way stopped the command
with a traceback (at --resume, on every rank). ngpt_ds.errors.UNPARSABLE names both; every reader of
a file a user may have been given catches them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ngpt_ds.errors import NgptConfigError

PAYLOADS = {
    "json": {"deep": "[" * 100_000, "huge-number": '{"format": ' + "7" * 5000 + "}"},
    "yaml": {"deep": "[" * 100_000, "huge-number": "model: " + "7" * 5000 + "\n"},
}


def _resume_config(folder: Path) -> object:
    from ngpt_ds.train.preflight import saved_run_config

    return saved_run_config(folder)


def _inference_config(folder: Path) -> object:
    from ngpt_ds.infer.loading import read_run_config

    return read_run_config(folder)


def _export_config(folder: Path) -> object:
    from ngpt_ds.infer.loading import read_export_config

    return read_export_config(folder)


def _dataset_meta(folder: Path) -> object:
    from ngpt_ds.data.shards import load_dataset_meta

    return load_dataset_meta(folder)


def _part(folder: Path) -> object:
    from ngpt_ds.data.parts import _read_part

    return _read_part(folder)


def _deepspeed_json(folder: Path) -> object:
    from ngpt_ds.train.ds_config import load_ds_config

    return load_ds_config(folder / "ds.json")


def _model_yaml(folder: Path) -> object:
    from ngpt_ds.model.config import load_yaml

    return load_yaml(folder / "run.yaml")


READERS = {
    "checkpoint config.yaml, --resume": (_resume_config, "config.yaml", "yaml"),
    "checkpoint config.yaml, export and generate": (_inference_config, "config.yaml", "yaml"),
    "export config.json": (_export_config, "config.json", "json"),
    "dataset meta.json": (_dataset_meta, "meta.json", "json"),
    "prepared part.json": (_part, "part.json", "json"),
    "DeepSpeed JSON": (_deepspeed_json, "ds.json", "json"),
    "model YAML": (_model_yaml, "run.yaml", "yaml"),
}


@pytest.mark.parametrize("payload", ["deep", "huge-number"])
@pytest.mark.parametrize("reader", list(READERS))
def test_a_crafted_metadata_file_is_an_error_naming_it(reader, payload, tmp_path):
    read, name, kind = READERS[reader]
    (tmp_path / name).write_text(PAYLOADS[kind][payload], encoding="utf-8")
    with pytest.raises(NgptConfigError) as caught:
        read(tmp_path)
    assert str(tmp_path) in str(caught.value)
    assert ("recursion" if payload == "deep" else "4300") in str(caught.value).lower()


@pytest.mark.parametrize("payload", ["deep", "huge-number"])
def test_the_folder_probes_read_a_crafted_file_as_not_theirs(payload, tmp_path):
    """The checks that only ask whether a folder is an export or a run (--overwrite, --out) answer no."""
    from ngpt_ds.infer.export import _is_export_folder
    from ngpt_ds.train.run_lock import _config_sections

    (tmp_path / "config.json").write_text(PAYLOADS["json"][payload], encoding="utf-8")
    (tmp_path / "config.yaml").write_text(PAYLOADS["yaml"][payload], encoding="utf-8")
    assert _is_export_folder(tmp_path) is False
    assert _config_sections(tmp_path / "config.yaml") is None
