"""Fault (session 33): the warning that a run's newest checkpoint was copied in from another run (sealed beside
other step folders, or saved by another run's id) spoke of "--resume auto continues from step_N" and told the
user to "stop now and move" the folder also when no training ran: export.py, generate.py and evaluate.py given a
run folder take its newest intact checkpoint through the same code (infer.run_checkpoint.resolve_checkpoint).
Those loaders now say what they do and what to pass instead; the trainer's words are unchanged
(tests/test_left33_keep1_colleagues_checkpoint.py holds them)."""

import json
import shutil
import sys

from ngpt_ds.infer.run_checkpoint import resolve_checkpoint

from conftest import logged_warnings, run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml


def test_a_loader_given_a_run_folder_names_a_copied_checkpoint_in_its_own_words(tmp_path, tiny_dataset):
    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=2, accum=1)
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    for out, steps in ((mine, 1), (theirs, 2)):  # theirs: its one save sealed beside nothing to compare
        train = tiny_train(steps, checkpoint_interval=steps, keep_checkpoints=1)
        run(
            [
                sys.executable,
                *train_cmd(write_yaml(tmp_path / f"{out.name}.yaml", tiny_ngpt(), train), ds, tiny_dataset, out),
            ]
        )
    checkpoints = mine / "checkpoints"
    shutil.copytree(theirs / "checkpoints/step_00000002", checkpoints / "step_00000002", symlinks=True)
    my_id, their_id = (json.loads((out / "run_id.json").read_text())["run_id"] for out in (mine, theirs))

    with logged_warnings("ngpt_ds.infer.run_checkpoint") as lines:
        assert resolve_checkpoint(mine) == checkpoints / "step_00000002"
    # The old code: "warning: --resume auto continues from step_00000002, ... stop now and move step_00000002 out
    # of ...: --resume auto then takes this run's own newest"
    assert lines == [
        f"warning: the newest checkpoint of this run folder is step_00000002, which was saved by run {their_id} (in "
        f"--out {theirs}), not by this --out's run {my_id} (a checkpoint copied in from another run). If that is not "
        f"meant, pass the checkpoint folder you mean ({checkpoints}/step_N) instead of the run folder"
    ]
    with logged_warnings("ngpt_ds.infer.run_checkpoint") as lines:
        assert resolve_checkpoint(checkpoints / "step_00000001") == checkpoints / "step_00000001"
    assert lines == []
