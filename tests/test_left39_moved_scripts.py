"""A move of --out as a save starts leaves DeepSpeed's recovery scripts (zero_to_fp32.py, zero_to_torch.py) at the new
place, DeepSpeed's own and executable: the check of that moment (the save of step 4 starting, checkpoint_interval 2,
so the new place holds step 2's ZeRO 2 checkpoint and its scripts) that tests/test_out38_moved_out.py made before
4d09245, which moved the scripts' check onto test_out37_out_moved_mid_save's runs (before DeepSpeed's first file, in
its writes, as the folder is renamed into place) and dropped this moment. A save removes the scripts for DeepSpeed to
write them again (checkpoint._before_save): a move before that removal must leave them at the new place, and a save
that stops on the move must not remove them there (a guard: the code since ab7839c holds it)."""

from __future__ import annotations

import os
from pathlib import Path

import deepspeed
from moved_out import moved_run

from ngpt_ds.train.manifest import verify

from conftest import tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml


def test_a_move_as_a_save_starts_leaves_deepspeeds_recovery_scripts_at_the_new_place(tmp_path, tiny_dataset):
    out, moved = tmp_path / "run", tmp_path / "moved"
    config = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(6, checkpoint_interval=2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    error = moved_run(train_flags(config, ds, tiny_dataset, out), "save:4", moved)  # exit 74, one line, no traceback
    assert error == (
        f"error: checkpoint of step 4 not saved: {out} was moved to {moved} while the run trained; its checkpoints "
        "went with it (the newest complete there is step_00000002; a step_N.tmp-save there is this unfinished save: "
        f"the next save removes it). Run the same command with --out {moved} to continue from its newest"
    )
    assert not out.exists(), sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    checkpoints = moved / "checkpoints"
    assert verify(checkpoints / "step_00000002") is None and not (checkpoints / "step_00000004").exists()
    scripts = sorted(p.name for p in checkpoints.glob("zero_to_*.py"))
    assert scripts == ["zero_to_fp32.py", "zero_to_torch.py"], sorted(os.listdir(checkpoints))
    for script in scripts:  # DeepSpeed's own, executable as DeepSpeed makes it
        written = checkpoints / script
        assert written.read_bytes() == (Path(deepspeed.__file__).parent / "utils" / script).read_bytes()
        assert os.stat(written).st_mode & 0o100, oct(os.stat(written).st_mode)
