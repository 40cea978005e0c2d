"""--out moved (mv) or removed between the run's lock and rank 0's setup writes (the lineage, run_id.json,
config.yaml) is named in the run's one line, with the --out to rerun with.

The fault (outb38's reading of job.py, session 38): the setup's OSError read 'error: cannot set up --out .../run
([Errno 2] No such file or directory: '.../run/run_id.json.tmp'); free space or fix permissions there and run again',
a wrong fix for a folder that was moved, though the run holds it from its lock (ngpt_ds.train.out_moved) and knows
the new place. Real 1-rank runs whose own process moves --out as `lineage.start_lineage` is entered.
"""

import shutil
from pathlib import Path

import pytest
from moved_out import moved_run

from conftest import tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml


def _run_moved_at_setup(tmp_path: Path, dataset: Path, by: str, moved: Path) -> tuple[Path, str]:
    """The run, --out moved to `moved` (`by` "rename": os.rename, what `mv` does on one filesystem) or removed ("remove")
    as rank 0's setup starts its writes (moved_out.MOVE_OUT "setup:0"): (out, the one line it stopped with, exit 2)."""
    out = tmp_path / "run"
    config = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(2, checkpoint_interval=2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    return out, moved_run(train_flags(config, ds, dataset, out), "setup:0", moved, code=2, MOVE_BY=by)


@pytest.mark.parametrize("by", ["rename", "remove"])
def test_a_move_as_the_setup_writes_is_named_not_free_space(tmp_path, tiny_dataset, by):
    moved = tmp_path / "moved"
    out, error = _run_moved_at_setup(tmp_path, tiny_dataset, by, moved)
    # old code: 'error: cannot set up --out .../run ([Errno 2] No such file or directory: ...); free space or fix
    # permissions there and run again'
    if by == "rename":
        assert error == (
            f"error: cannot set up --out {out}: the folder was moved to {moved} as the run started; run the same "
            f"command with --out {moved}"
        )
        assert (moved / "train.lock").is_file()
    else:
        assert error == (
            f"error: cannot set up --out {out}: the folder was removed as the run started (deleted, or moved to another "
            "filesystem); run the same command again with --out naming the folder to use"
        )
    assert not out.exists()
    shutil.rmtree(moved, ignore_errors=True)
