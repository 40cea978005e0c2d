"""A step_N path above every checkpoint of a run (a mistyped step, or one the run has not reached yet).

Fault (1214c7f, ngpt_ds.infer.run_checkpoint.removed_checkpoint): `generate.py run/checkpoints/step_00000099` of a
run whose checkpoints are step 2 and step 4 said "step_00000099 does not exist (a training run's retention
(train.keep_checkpoints) deletes its older checkpoints as it saves newer ones)": retention deletes a checkpoint only
once a newer one is saved, so it never removes a step above all of them, and the line sent the user looking for a
deletion that never happened. Now that step is said to have no checkpoint saved; a missing step below the newest
keeps the retention line (it may have been deleted so), and both name the newest complete checkpoint."""

from __future__ import annotations

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.infer.run_checkpoint import resolve_checkpoint

RETENTION = "(a training run's retention (train.keep_checkpoints) deletes its older checkpoints as it saves newer ones)"


def _message(path) -> str:
    with pytest.raises(NgptConfigError) as caught:
        resolve_checkpoint(path)
    return str(caught.value)


def test_a_step_above_every_checkpoint_is_not_blamed_on_retention(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    for step in (2, 4):
        (checkpoints / f"step_{step:08d}").mkdir(parents=True)
        (checkpoints / f"step_{step:08d}" / "COMPLETE").touch()
    newest = (
        f"The newest complete checkpoint there is now {checkpoints / 'step_00000004'}: pass it, or the run folder "
        f"{tmp_path / 'run'}, which takes the newest"
    )
    # old code: "... step_00000099 does not exist (a training run's retention (train.keep_checkpoints) deletes ..."
    assert _message(checkpoints / "step_00000099") == (
        f"{checkpoints / 'step_00000099'} does not exist: no checkpoint of that step has been saved there. {newest}"
    )
    assert (
        _message(checkpoints / "step_00000001")
        == f"{checkpoints / 'step_00000001'} does not exist {RETENTION}. {newest}"
    )
    # a newer step folder without COMPLETE (a save never leaves one: it writes under .tmp-save and renames it whole)
    # is no sign that a newer save completed, which retention needs: resume's line says so by the same rule
    # (checkpoint_layout.newer_complete, helper out37); it had blamed the missing step below it on retention
    (checkpoints / "step_00000006").mkdir()
    assert _message(checkpoints / "step_00000005") == (
        f"{checkpoints / 'step_00000005'} does not exist: no checkpoint of that step has been saved there. {newest}"
    )
