"""The line for an --out removed after a save names that save's checkpoint as the newest (review of ab7839c).

Fault: ngpt_ds.train.out_moved noted the newest complete checkpoint (for the line of an --out removed: deleted, or
moved to another filesystem) only at a save's start, before that save's checkpoint was complete. An --out moved to
another filesystem after the save of step 4, met first by the save of step 6 (log_interval 10: no metrics write in
between), said 'The newest complete checkpoint the run had in it was step_00000002', though step_00000004 was complete
(and is in the copy): a rerun from the copy was told to expect two steps less. Now a save that completes notes its own
checkpoint (checkpoint.save, through out_moved.gone)."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

from test_out38_moved_out import _MOVED

from conftest import REPO, run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml


def test_an_out_removed_after_a_save_names_that_saves_checkpoint(tmp_path, tiny_dataset):
    moved = Path("/dev/shm") / f"review38-{uuid.uuid4().hex}"  # another filesystem: shutil.move copies, then deletes
    assert os.stat("/dev/shm").st_dev != os.stat(tmp_path).st_dev, "needs /dev/shm on another filesystem than /tmp"
    out = tmp_path / "run"
    config = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(8, checkpoint_interval=2, log_interval=10))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "MOVED": str(moved),
        "MOVE_AT": "after:4",  # after the save of step 4 returned
        "MOVE_BY": "copy",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    try:
        done = run(
            [sys.executable, "-c", _MOVED, *map(str, train_cmd(config, ds, tiny_dataset, out))], env=env, check=False
        )
        copied = sorted(p.parent.name for p in moved.glob("checkpoints/*/COMPLETE"))
    finally:
        shutil.rmtree(moved, ignore_errors=True)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 74 and "Traceback" not in done.stderr and len(errors) == 1, done.stderr[-3000:]
    assert copied == ["step_00000002", "step_00000004"]
    # ab7839c: '... The newest complete checkpoint the run had in it was step_00000002: if the folder was copied ...'
    assert errors[0] == (
        f"error: checkpoint of step 6 not saved: {out} was removed while the run trained: deleted, or moved to another "
        "filesystem (mv copies the folder there, then deletes it here), and where a copy is cannot be known from here. "
        "The newest complete checkpoint the run had in it was step_00000004: if the folder was copied, run the same "
        "command with --out at the copy's place to continue from it (a step_N.tmp-save in the copy is an unfinished "
        "save: the next save removes it)"
    )
    assert not out.exists()
