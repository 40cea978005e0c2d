"""A named pipe where an export's config.json belongs is refused, never read: reading one waits forever for a
writer that never comes."""

import os
from pathlib import Path

import pytest

from ngpt_ds.errors import NgptConfigError

from conftest import fails_after


@pytest.fixture
def deadline():
    with fails_after(20, "the named pipe was opened for reading"):
        yield


def _pipe_folder(folder: Path) -> Path:
    folder.mkdir()
    os.mkfifo(folder / "config.json")
    return folder


def test_overwrite_of_a_folder_whose_config_json_is_a_named_pipe_is_refused_not_waited_on(
    tmp_path, monkeypatch, deadline
):
    """Fault: `export.py CKPT --out DIR --overwrite`, where DIR/config.json is a named pipe, hung for ever: the
    check whether DIR holds an earlier export (export._is_export_folder) opened the pipe and waited for a writer.
    It is a folder holding no export now, and --overwrite refuses it with the usual message."""
    from ngpt_ds.infer import export

    out = _pipe_folder(tmp_path / "out")
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000001"
    checkpoint.mkdir(parents=True)
    # The checkpoint is not read before the destination is checked: only its path is compared with --out.
    monkeypatch.setattr(export, "resolve_checkpoint", lambda path: checkpoint)
    with pytest.raises(NgptConfigError) as err:
        export.export_model(tmp_path / "run", out, overwrite=True)
    assert str(err.value) == (
        f"--out {out} holds no exported model (no config.json with format 'ngpt_ds-export'); --overwrite replaces "
        "only a folder this command wrote. Choose another path, or empty that folder yourself"
    )


def test_load_export_of_a_folder_whose_config_json_is_a_named_pipe_is_refused_not_waited_on(tmp_path, deadline):
    """Fault: ngpt_ds.infer.load_export(DIR), where DIR/config.json is a named pipe, hung for ever reading it
    (load() checks that it is a file first; load_export, public too, did not)."""
    from ngpt_ds.infer import load_export

    folder = _pipe_folder(tmp_path / "export")
    with pytest.raises(NgptConfigError) as err:
        load_export(folder)
    assert str(err.value) == f"{folder}/config.json is not a regular file; export the checkpoint again"
