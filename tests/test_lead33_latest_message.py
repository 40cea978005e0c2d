"""Fault (session 33): the repair of a `latest` left on an older step (resume._repair_latest, at the start of every
resume) blamed a killed save whatever the cause: "checkpoints/latest named step_00000004: a save was killed before
updating it", also when the newer step was a folder copied in by hand (a colleague's checkpoint) or when `latest`
named a step deleted since. The user was sent looking for a crash that never happened. The cause now comes from
the newest checkpoint's seal record (the COMPLETE files of the step folders it was sealed beside): a killed save
sealed the newest step beside the step `latest` names, as that step is now.

The checkpoints are real: two runs of the trainer (this one and another with another lr), 6 steps each,
checkpoints every 2 steps."""

import shutil
import sys

import pytest

from ngpt_ds.train import resume

from conftest import run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml

STEP = "step_{:08d}".format


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_dataset):
    root = tmp_path_factory.mktemp("latest_message")
    ds = write_ds_config(root / "z0.json", stage=0, bf16=False, micro=2, accum=1)
    for name, lr in (("mine", 1e-2), ("theirs", 5e-3)):
        config = write_yaml(root / f"{name}.yaml", tiny_ngpt(), tiny_train(6, checkpoint_interval=2, lr=lr))
        run([sys.executable, *train_cmd(config, ds, tiny_dataset, root / name)])
    return root


def checkpoints_with_latest(two_runs, tmp_path, latest: str):
    """A copy of this run's checkpoints/ whose `latest` names `latest`."""
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(two_runs / "mine" / "checkpoints", checkpoints, symlinks=True)
    assert (checkpoints / "latest").read_text().strip() == STEP(6)
    (checkpoints / "latest").write_text(latest)
    return checkpoints


def test_a_save_killed_before_updating_latest_is_named_so(two_runs, tmp_path):
    checkpoints = checkpoints_with_latest(two_runs, tmp_path, STEP(4))
    assert resume._repair_latest(checkpoints) == (
        f"checkpoints/latest named {STEP(4)}: a save was killed before updating it; it names {STEP(6)} now"
    )


def test_a_newer_step_copied_in_by_hand_is_not_blamed_on_a_killed_save(two_runs, tmp_path):
    checkpoints = checkpoints_with_latest(two_runs, tmp_path, STEP(4))
    shutil.rmtree(checkpoints / STEP(6))
    shutil.copytree(two_runs / "theirs" / "checkpoints" / STEP(6), checkpoints / STEP(6), symlinks=True)
    # The old code: "... named step_00000004: a save was killed before updating it; ..."
    assert resume._repair_latest(checkpoints) == (
        f"checkpoints/latest named {STEP(4)}: {STEP(6)}, newer, was not saved after it in this folder (copied or "
        f"moved in by hand); it names {STEP(6)} now"
    )


def test_one_of_the_runs_own_steps_renamed_newer_is_not_blamed_on_a_killed_save(two_runs, tmp_path):
    checkpoints = checkpoints_with_latest(two_runs, tmp_path, STEP(6))
    (checkpoints / STEP(4)).rename(checkpoints / STEP(8))  # sealed before step 6 existed
    assert resume._repair_latest(checkpoints) == (
        f"checkpoints/latest named {STEP(6)}: {STEP(8)}, newer, was not saved after it in this folder (copied or "
        f"moved in by hand); it names {STEP(8)} now"
    )


def test_a_latest_naming_a_deleted_step_says_so(two_runs, tmp_path):
    checkpoints = checkpoints_with_latest(two_runs, tmp_path, STEP(8))
    assert resume._repair_latest(checkpoints) == (
        f"checkpoints/latest named {STEP(8)}: no complete checkpoint has that name here (moved or deleted by hand, or "
        f"never one); it names {STEP(6)} now"
    )
