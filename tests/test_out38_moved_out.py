"""A run whose --out is moved (mv) names what became of the folder in every line that meets the move: the metrics
write, a move before the first save, a move to another filesystem, and DeepSpeed's recovery script at the new place
(helper out38, session 38).

Faults, on real 1-rank runs whose --out the run's own process moves (os.rename, what `mv` does on one filesystem;
shutil.move, what `mv` does across two: a copy, then the original deleted) at a chosen point:
- the metrics write of the step after a save met the move and said '... (No such file or directory). Check its
  filesystem and the disk, and what holds that name', a wrong fix before the move's line;
- a move before the first save: the run held no descriptor of --out (rank 0 opened it at its first save), so the
  metrics line said '... is gone (moved or deleted ...)' and 'No checkpoint was saved yet ... running the same command
  again starts from step 0' (at the old place, a new run), and a save that met it first wrote its checkpoint into a
  folder DeepSpeed made again at the old place;
- a move to another filesystem read '... is gone (moved or deleted while the run trained) ...: run the same command
  with --out at the folder's new place', as if the run knew of a new place; it names neither what happened (the
  folder was removed: deleted, or copied elsewhere and then deleted) nor the newest complete checkpoint written;
- a move in the middle of a save left the new place without DeepSpeed's zero_to_fp32.py (each save removes it
  first, then DeepSpeed writes it again, at the old place once the folder is gone) until the next save: asserted in
  tests/test_out37_out_moved_mid_save.py, whose runs move --out at those moments.
"""

import os
import re
import shutil
import uuid
from pathlib import Path

import pytest
from moved_out import MOVE_OUT, moved_run

from conftest import tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml

_MOVED = MOVE_OUT
"""The wrapper these runs go through (moved_out.MOVE_OUT), by its old name: tests/test_review38_out_removed_newest.py
imports it from here."""


def _moved_run(tmp_path: Path, dataset: Path, move_at: str, moved: Path, *, by: str = "rename", interval: int = 2):
    """The run, --out moved to `moved` at `move_at` (moved_out.MOVE_OUT: "metrics:N", "save:N", "after:N",
    "writes:N") by os.rename (`by` "rename", `mv` on one filesystem) or shutil.move ("copy", `mv` to another
    filesystem: a copy, then the original deleted): (out, config, ds config, the one line it stopped with, exit 74)."""
    out = tmp_path / "run"
    config = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(6, checkpoint_interval=interval))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    return out, config, ds, moved_run(train_flags(config, ds, dataset, out), move_at, moved, MOVE_BY=by)


def _metrics_line(error: str, out: Path, step: int) -> str:
    """What follows the file and reason in the line of a metrics write into a moved --out (TensorBoard's events file
    is written first, under a name of its own)."""
    head = re.escape(f"error: the metrics of step {step} could not be written to {out}/") + r"\S+ "
    match = re.match(head + re.escape("(No such file or directory). "), error)
    assert match is not None, error
    return error[match.end() :]


@pytest.fixture
def other_filesystem(tmp_path):
    """A folder on another filesystem than tmp_path's (/dev/shm, a tmpfs, where /tmp is a disk), removed after."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.fail("this test needs /dev/shm on another filesystem than the test's tmp_path (`stat -f` them)")
    folder = shm / f"out38-{uuid.uuid4().hex}"
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_the_metrics_write_that_meets_the_move_names_it_not_the_filesystem(tmp_path, tiny_dataset):
    moved = tmp_path / "moved"
    out, _, _, error = _moved_run(tmp_path, tiny_dataset, "after:4", moved)
    # old code: 'error: the metrics of step 5 could not be written to .../run/tensorboard/events.out.tfevents...
    # (No such file or directory). Check its filesystem and the disk, and what holds that name. .../run was moved ...'
    assert _metrics_line(error, out, 5) == (
        f"{out} is no longer the run's folder. {out} was moved to {moved} while the run trained; its checkpoints, up to step 4, went with "
        f"it: run the same command with --out {moved} to continue from its newest"
    )


def test_a_move_before_the_first_save_names_the_new_place_in_the_metrics_line(tmp_path, tiny_dataset):
    moved = tmp_path / "moved"
    out, _, _, error = _moved_run(tmp_path, tiny_dataset, "metrics:2", moved, interval=4)
    # old code: '... (No such file or directory). Check its filesystem and the disk, and what holds that name. No
    # checkpoint was saved yet (train.checkpoint_interval 4): running the same command again starts from step 0'
    assert _metrics_line(error, out, 3) == (
        f"{out} is no longer the run's folder. {out} was moved to {moved} while the run trained, before its first checkpoint "
        f"(train.checkpoint_interval 4): run the same command with --out {moved} to go on there, from step 0"
    )
    assert not out.exists()
    assert (moved / "config.yaml").is_file() and (moved / "train.lock").is_file()


def test_a_move_before_the_first_save_names_the_new_place_in_the_save_line(tmp_path, tiny_dataset):
    moved = tmp_path / "moved"
    out, _, _, error = _moved_run(tmp_path, tiny_dataset, "save:4", moved, interval=4)
    # old code: 'error: the metrics of step 5 could not be written to ...: Checkpoints up to step 4 are intact in
    # .../run/checkpoints': the save made .../run/checkpoints again at the old place (no descriptor held yet to tell)
    assert error == (
        f"error: checkpoint of step 4 not saved: {out} was moved to {moved} while the run trained; its checkpoints "
        "went with it (no complete checkpoint is there; a step_N.tmp-save there is this unfinished save: the next "
        f"save removes it). Run the same command with --out {moved} to go on there, from step 0"
    )
    assert not out.exists(), sorted(str(p.relative_to(out)) for p in out.rglob("*"))


def test_a_move_to_another_filesystem_after_a_save_says_removed_and_names_the_newest_checkpoint(
    tmp_path, tiny_dataset, other_filesystem
):
    out, _, _, error = _moved_run(tmp_path, tiny_dataset, "after:4", other_filesystem, by="copy")
    assert (other_filesystem / "checkpoints" / "step_00000004" / "COMPLETE").is_file()  # the copy mv made
    # old code: '... .../run is gone (moved or deleted while the run trained); its checkpoints, up to step 4, went
    # with it: run the same command with --out at the folder's new place to continue from its newest'
    assert _metrics_line(error, out, 5) == (
        f"{out} is no longer the run's folder. {out} was removed while the run trained: deleted, or moved to another "
        "filesystem (mv copies the folder there, then deletes it here), and where a copy is cannot be known from "
        "here. The newest complete checkpoint the run had in it was step_00000004: if the folder was copied, run the "
        "same command with --out at the copy's place to continue from it (a step_N.tmp-save in the copy is an "
        "unfinished save: the next save removes it)"
    )
    assert not out.exists()


def test_a_move_to_another_filesystem_during_a_save_says_removed_and_names_the_newest_checkpoint(
    tmp_path, tiny_dataset, other_filesystem
):
    out, _, _, error = _moved_run(tmp_path, tiny_dataset, "writes:4", other_filesystem, by="copy")
    # old code: 'error: checkpoint of step 4 not saved: .../run is gone (moved or deleted while the run trained), with
    # the checkpoints the run had saved: run the same command with --out at the folder's new place ...'
    assert error == (
        f"error: checkpoint of step 4 not saved: {out} was removed while the run trained: deleted, or moved to "
        "another filesystem (mv copies the folder there, then deletes it here), and where a copy is cannot be known "
        "from here. The newest complete checkpoint the run had in it was step_00000002: if the folder was copied, "
        "run the same command with --out at the copy's place to continue from it (a step_N.tmp-save in the copy is "
        "an unfinished save: the next save removes it)"
    )
    assert not out.exists(), sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert (other_filesystem / "checkpoints" / "step_00000002" / "COMPLETE").is_file()
