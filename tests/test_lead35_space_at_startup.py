"""A disk too full for the run's next checkpoint is refused at startup, not at the first save (lead, session 35).

Fault (found by helper red35): a run resumed on a disk with less free space than its last checkpoint trained a whole
checkpoint interval, then stopped at the save with exit 74 ('not enough free space for the checkpoint of step N ...
Nothing was written'), the steps lost; every rerun trained them again to the same end. The same figures (the newest
checkpoint's size, else 16 bytes per parameter, against the free space plus the leftovers the save removes first)
are now checked once --out is set up, before the first step: exit 2, one line, nothing trained. Real runs on a small
tmpfs.
"""

import sys

from ngpt_ds.train.manifest import checkpoint_bytes

from conftest import assert_complete, run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml

FIX = "Free space there (or have the quota raised), then run the same command again"


def take_all_but(disk, keep: int) -> None:
    """Fill `disk` with a file of zeros, written (tmpfs gives no blocks to a hole), leaving about `keep` bytes free."""
    import shutil

    size = shutil.disk_usage(disk).free - keep
    with open(disk / "filler", "wb") as f:
        for _ in range(size // 2**16):
            f.write(b"\0" * 2**16)


def two_step_run(tmp_path, tiny_dataset, out):
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(2, checkpoint_interval=2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    run([sys.executable, *train_cmd(config, ds, tiny_dataset, out)])
    assert_complete(out / "checkpoints" / "step_00000002")
    return train_cmd(config, ds, tiny_dataset, out, "--max-steps", "4")


def test_a_resume_on_a_disk_too_full_for_its_next_checkpoint_trains_nothing(tmp_path, tiny_dataset, mount_tmpfs):
    disk = mount_tmpfs(8 * 2**20)
    out = disk / "run"
    more = two_step_run(tmp_path, tiny_dataset, out)
    need = checkpoint_bytes(out / "checkpoints" / "step_00000002")
    take_all_but(disk, need // 2)

    refused = run([sys.executable, *more], check=False)
    # old code: steps 3 and 4 trained, then exit 74 'checkpoint of step 4 not saved: not enough free space ...'
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "step      3/4" not in refused.stdout + refused.stderr
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(
        f"error: not enough free space for this run's next checkpoint: it needs about {need / 2**20:.1f} MiB (the "
        f"size of step_00000002), "
    ), line
    assert line.endswith(
        f"are free on the filesystem of {out / 'checkpoints'}; training now would stop at its first save with "
        f"nothing saved. {FIX}"
    ), line
    assert_complete(out / "checkpoints" / "step_00000002")

    (disk / "filler").unlink()
    resumed = run([sys.executable, *more])
    assert f"resumed from {out / 'checkpoints' / 'step_00000002'} at step 2" in resumed.stdout, resumed.stdout[-3000:]
    assert_complete(out / "checkpoints" / "step_00000004")


def test_the_leftovers_the_save_removes_count_as_free(tmp_path, tiny_dataset, mount_tmpfs):
    """Free space below the need, but enough with an interrupted save's step_N.tmp-save, which the save removes
    before its own check: the run goes on, and saves."""
    disk = mount_tmpfs(8 * 2**20)
    out = disk / "run"
    more = two_step_run(tmp_path, tiny_dataset, out)
    need = checkpoint_bytes(out / "checkpoints" / "step_00000002")
    leftover = out / "checkpoints" / "step_00000004.tmp-save"
    leftover.mkdir()
    (leftover / "mp_rank_00_model_states.pt").write_bytes(b"\0" * need)
    take_all_but(disk, need // 2)

    resumed = run([sys.executable, *more])
    assert "step      4/4" in resumed.stdout + resumed.stderr
    assert_complete(out / "checkpoints" / "step_00000004")
    assert not leftover.exists()


def test_a_new_run_on_a_disk_smaller_than_its_first_checkpoint_trains_nothing(tmp_path, tiny_dataset, mount_tmpfs):
    """No checkpoint yet: 16 bytes for each of at least 65,536 parameters (1.0 MiB) against a 512 KiB disk."""
    disk = mount_tmpfs(512 * 2**10)
    out = disk / "run"
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(2, checkpoint_interval=2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    refused = run([sys.executable, *train_cmd(config, ds, tiny_dataset, out)], check=False)
    assert refused.returncode == 2, refused.stderr[-3000:]  # old code: 2 steps trained, then exit 74
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(
        "error: not enough free space for this run's next checkpoint: it needs about 1.0 MiB (16 bytes per parameter), "
    ), line
    assert "step      1/2" not in refused.stdout + refused.stderr


def test_without_a_checkpoint_a_pipeline_is_left_to_the_saves_own_check(tmp_path):
    """review35: a pipeline's save estimates from rank 0's stage times the model-parallel ranks, not from the whole
    model, so the whole model's figure is no lower bound of what its save asks, and could refuse a run whose saves
    fit. job.py passes no parameter count for a pipeline: with no checkpoint to go by, nothing is asked at startup
    (a checkpoint's size still is: test_a_resume_on_a_disk_too_full_for_its_next_checkpoint_trains_nothing)."""
    from ngpt_ds.train.checkpoint_space import startup_space_problem

    assert startup_space_problem(tmp_path / "checkpoints", -1, None) is None
    problem = startup_space_problem(tmp_path / "checkpoints", -1, 2**60 // 16)  # a whole model of 2^56 parameters
    assert problem is not None and problem.startswith(
        "not enough free space for this run's next checkpoint: it needs about 1073741824.000 GiB (16 bytes per "
        "parameter), "
    ), problem
