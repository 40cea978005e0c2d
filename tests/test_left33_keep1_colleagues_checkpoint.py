"""Fault (left33): a colleague's checkpoint from a keep-1 run, copied into this run's checkpoints/, was resumed
with no warning.

--resume auto says a checkpoint was copied in from another run when its seal record (sealed_among) lists step
folders with other contents than this run's checkpoints/ holds under those names (tests/
test_left32_colleagues_checkpoint.py). A keep-1 run's checkpoint is sealed beside nothing of its own (here: its
first save), so that comparison has nothing to go on, and the copy was taken as this run's newest in silence. Now
each --out has a run id (run_id.json, made at the run's first start), every save records it in its manifest, and
auto warns, naming both runs, when the checkpoint it takes records another; it still resumes (a copy may be
meant). The run's own checkpoint, in its own --out, raises no such warning; a checkpoint without the entry (an
older ngpt_ds) none either.
"""

import json
import shutil
import sys

from ngpt_ds.train import run_identity

from conftest import run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml


def test_auto_names_the_run_that_saved_a_copied_keep_1_checkpoint(tmp_path, tiny_dataset):
    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=2, accum=1)
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    a = write_yaml(tmp_path / "a.yaml", tiny_ngpt(), tiny_train(1, checkpoint_interval=1, keep_checkpoints=1))
    b = write_yaml(
        tmp_path / "b.yaml", tiny_ngpt(), {**tiny_train(2, checkpoint_interval=2, keep_checkpoints=1), "lr": 5e-3}
    )
    run([sys.executable, *train_cmd(a, ds, tiny_dataset, mine)])
    run([sys.executable, *train_cmd(b, ds, tiny_dataset, theirs)])
    copied, checkpoints = theirs / "checkpoints/step_00000002", mine / "checkpoints"
    assert json.loads((copied / "COMPLETE").read_text())["sealed_among"]["steps"] == {}  # nothing to compare
    shutil.copytree(copied, checkpoints / "step_00000002", symlinks=True)

    again = run([sys.executable, *train_cmd(a, ds, tiny_dataset, mine), "--max-steps", "3"])
    said = again.stdout + again.stderr
    # Old code: resumed from the copy with no such line (and made no run_id.json).
    assert said.count("which was saved by run") == 1, said[-3000:]
    my_id = json.loads((mine / "run_id.json").read_text())["run_id"]
    their_id = json.loads((theirs / "run_id.json").read_text())["run_id"]
    assert my_id != their_id and len(my_id) == 32
    assert json.loads((copied / "COMPLETE").read_text())["saved_by_run"] == {"run_id": their_id, "out": str(theirs)}
    warning = (
        f"warning: --resume auto continues from step_00000002, which was saved by run {their_id} (in --out "
        f"{theirs}), not by this --out's run {my_id} (a checkpoint copied in from another run). If that is not "
        f"meant, stop now and move step_00000002 out of {checkpoints}: --resume auto then takes this run's own newest"
    )
    assert said.count(warning) == 1, said[-3000:]
    assert "was not saved beside" not in said
    assert f"resumed from {checkpoints / 'step_00000002'} at step 2" in said
    # The step this run saved after the copy records this run: its next resume is quiet.
    assert json.loads((checkpoints / "step_00000003/COMPLETE").read_text())["saved_by_run"]["run_id"] == my_id

    # The same keep-1 checkpoint resumed in its own --out: no warning.
    own = run([sys.executable, *train_cmd(b, ds, tiny_dataset, theirs), "--max-steps", "4"])
    assert "was saved by run" not in own.stdout + own.stderr, (own.stdout + own.stderr)[-3000:]
    assert f"resumed from {copied} at step 2" in own.stdout + own.stderr
    assert json.loads((theirs / "run_id.json").read_text())["run_id"] == their_id  # kept, not made again


def test_a_checkpoint_without_a_run_id_raises_no_warning(tmp_path):
    """An older ngpt_ds's manifest records no run: no warning, no error. A recorded run in a folder with no
    run_id.json (a fresh --out holding only the copy) is named as such."""
    assert run_identity.ensure(tmp_path) is not None
    assert run_identity.saved_by_another_run({"format": "x", "step": 2}, tmp_path) is None
    assert run_identity.saved_by_another_run(None, tmp_path) is None
    other = {"run_id": "0" * 32, "out": "/elsewhere/run"}
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert run_identity.saved_by_another_run({"saved_by_run": other}, fresh) == (
        f"run {'0' * 32} (in --out /elsewhere/run), not by {fresh}, which has no run id yet"
    )
    mine = run_identity.read(tmp_path)
    assert mine is not None and run_identity.saved_by_another_run({"saved_by_run": mine}, tmp_path) is None
