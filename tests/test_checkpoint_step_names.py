"""Folder names that look like step_N to str.isdigit but are not: digits of other scripts, superscripts.

Fault (checkpoint review s15): is_step_dir and the other name checks used str.isdigit, which takes 'step_²'; int()
refuses '²', so one such folder in checkpoints/ made every listing raise ValueError: the trainer stopped at
its start, export.py and generate.py ended in a traceback. Fullwidth digits ('step_１２') pass both isdigit and
int(): that folder was taken for step 12.
"""

from pathlib import Path

import pytest

from ngpt_ds.infer.run_checkpoint import resolve_checkpoint
from ngpt_ds.train import checkpoint, manifest
from ngpt_ds.train.resume import resolve_resume

NOT_STEPS = ["step_²", "step_0000000²", "step_１２", "step_١٢", "step_0000_12", "step_", "step_+12", "step_ 12"]


def _complete(folder: Path, step: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"A" * 100)
    manifest.write_manifest(folder, manifest.build_manifest(folder, step))
    return folder


@pytest.fixture
def checkpoints(tmp_path: Path) -> Path:
    folder = tmp_path / "run" / checkpoint.CHECKPOINTS
    for step in (2, 4):
        _complete(folder / checkpoint.tag_for(step), step)
    for name in NOT_STEPS:
        _complete(folder / name, 12)
    return folder


def test_only_ascii_digits_make_a_step_name(tmp_path):
    for name in ["step_00000012", "step_7", *NOT_STEPS]:
        (tmp_path / name).mkdir()
    assert [name for name in NOT_STEPS if checkpoint.is_step_dir(tmp_path / name)] == []
    assert checkpoint.is_step_dir(tmp_path / "step_00000012") and checkpoint.is_step_dir(tmp_path / "step_7")
    assert checkpoint.is_step_name("step_00000012") and not checkpoint.is_step_name("step_²")


def test_folders_named_with_other_digits_are_left_out_of_every_listing(checkpoints):
    assert [d.name for d in checkpoint.step_dirs(checkpoints)] == ["step_00000002", "step_00000004"]
    assert [d.name for d in checkpoint.complete_checkpoints(checkpoints)] == ["step_00000002", "step_00000004"]


def test_converted_and_moved_aside_folders_named_with_other_digits_are_left_alone(checkpoints):
    for name in NOT_STEPS:
        _complete(checkpoints / (name + checkpoint.UNIVERSAL_SUFFIX), 12)
        _complete(checkpoints / (name + checkpoint.REPLACED_SUFFIX), 12)
    _complete(checkpoints / ("step_00000004" + checkpoint.UNIVERSAL_SUFFIX), 4)
    assert [d.name for d in checkpoint.universal_dirs(checkpoints)] == ["step_00000004-universal"]
    assert checkpoint.moved_aside(checkpoints) == []
    assert checkpoint.restore_moved_aside(checkpoints) == []


def test_resume_export_and_generate_take_the_newest_real_step(checkpoints):
    run = checkpoints.parent
    assert resolve_resume(run, "auto", warn=lambda line: None) == checkpoints / "step_00000004"
    assert resolve_checkpoint(run) == checkpoints / "step_00000004"  # what export.py and generate.py read


def test_point_latest_names_the_newest_real_step(checkpoints):
    checkpoint.point_latest(checkpoints)
    assert (checkpoints / checkpoint.LATEST).read_text() == "step_00000004"
