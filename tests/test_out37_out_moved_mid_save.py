"""A run whose --out is moved (mv) during a checkpoint save stops with one line naming the move, where the folder went,
its newest complete checkpoint and the fix; nothing is left at the old place, and the same command with --out at the
new place resumes (helper out37, session 37).

Faults, on a real 1-rank run (checkpoint_interval 2) moved during the save of step 4 by the process itself (an
os.rename, what `mv` does), at three moments:
- before DeepSpeed's first file: torch's zip writer raised 'RuntimeError: Parent directory .../step_00000004.tmp-save
  does not exist', which stopped the run (exit 1) with a 40-line traceback (1 of 24 loops with the move at a random
  moment of a slowed save).
- in DeepSpeed's writes (after its first file): DeepSpeed's makedirs made <old --out>/checkpoints/step_00000004.tmp-save
  again and wrote the rest there, and the save sealed and renamed it: <old --out>/checkpoints/step_00000004 with a
  COMPLETE manifest and no model states file (those went with the move), called intact ('Checkpoints up to step 4 are
  intact in <old --out>/checkpoints').
- before the folder is renamed into place: 'checkpoint of step 4 not saved: finishing <old>/checkpoints/step_00000004:
  No such file or directory', naming neither the move nor what to do.
- right after the save (the metrics write of step 5 meets the move): '... its checkpoints, up to step 4, went with it:
  run the same command with --out at the folder's new place', a place the run knew.
- (helper out38) before DeepSpeed's first file or in its writes: the new place had no zero_to_fp32.py or
  zero_to_torch.py (each save removes them for DeepSpeed to write them again, which it then did at the old place, or
  not at all) until the next save.
"""

import os
import sys
from pathlib import Path

import deepspeed
import pytest
from moved_out import moved_run

from ngpt_ds.train.manifest import verify

from conftest import assert_complete, run, tiny_ngpt, tiny_train, train_cmd, train_flags, write_ds_config, write_yaml


def _moved_run(tmp_path: Path, tiny_dataset: Path, at: str):
    """The run, --out renamed to `moved` once during the save of step 4 (moved_out.MOVE_OUT): before DeepSpeed's
    first torch.save ("before_write"), after it ("writes"), as the save's _finish_save starts ("finish"), or after the
    save ("after"): (out, moved, config, ds config, the one line it stopped with, exit 74)."""
    out, moved = tmp_path / "run", tmp_path / "moved"
    config = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(6, checkpoint_interval=2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    return out, moved, config, ds, moved_run(train_flags(config, ds, tiny_dataset, out), f"{at}:4", moved)


@pytest.mark.parametrize("at", ["before_write", "writes", "finish"])
def test_a_save_whose_out_is_moved_names_the_new_place_and_leaves_nothing_at_the_old(tmp_path, tiny_dataset, at):
    # old code (before_write): exit 1, a traceback (_moved_run: exit 74, no traceback, one error line)
    out, moved, config, ds, error = _moved_run(tmp_path, tiny_dataset, at)
    # old code (writes): out/checkpoints/step_00000004 sealed COMPLETE without mp_rank_00_model_states.pt
    assert not out.exists(), sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    # old code (finish): 'error: checkpoint of step 4 not saved: finishing .../run/checkpoints/step_00000004: No
    # such file or directory (.../run/checkpoints)'
    assert error == (
        f"error: checkpoint of step 4 not saved: {out} was moved to {moved} while the run trained; its checkpoints "
        "went with it (the newest complete there is step_00000002; a step_N.tmp-save there is this unfinished save: "
        f"the next save removes it). Run the same command with --out {moved} to continue from its newest"
    )
    assert verify(moved / "checkpoints" / "step_00000002") is None  # intact at the new place
    assert not (moved / "checkpoints" / "step_00000004").exists()
    # old code (before_write, writes): [] == ['zero_to_fp32.py', 'zero_to_torch.py']
    scripts = sorted(p.name for p in (moved / "checkpoints").glob("zero_to_*.py"))
    assert scripts == ["zero_to_fp32.py", "zero_to_torch.py"], sorted(os.listdir(moved / "checkpoints"))
    for script in scripts:  # DeepSpeed's own, executable as DeepSpeed makes it
        written = moved / "checkpoints" / script
        assert written.read_bytes() == (Path(deepspeed.__file__).parent / "utils" / script).read_bytes()
        assert os.stat(written).st_mode & 0o100, oct(os.stat(written).st_mode)

    resumed = run([sys.executable, *train_cmd(config, ds, tiny_dataset, moved, "--resume", "auto")])
    # the save of step 4 was never sealed: the rerun goes on from step 2 and removes its .tmp-save
    assert f"resumed from {moved / 'checkpoints' / 'step_00000002'} at step 2" in resumed.stdout, resumed.stdout[-3000:]
    for step in ("step_00000004", "step_00000006"):
        assert_complete(moved / "checkpoints" / step)
    assert not out.exists()


def test_a_run_moved_after_a_save_names_the_new_place(tmp_path, tiny_dataset):
    out, moved, _, _, error = _moved_run(tmp_path, tiny_dataset, "after")  # exit 74, no traceback, one error line
    assert error.startswith("error: the metrics of step 5 could not be written"), error
    # old code: '... went with it: run the same command with --out at the folder's new place to continue ...'
    assert error.endswith(
        f"{out} was moved to {moved} while the run trained; its checkpoints, up to step 4, went with it: run the same "
        f"command with --out {moved} to continue from its newest"
    ), error
    assert verify(moved / "checkpoints" / "step_00000004") is None
    assert not out.exists()
