"""The same command again on a run folder whose disk filled up (helper red35, session 35), on a real small tmpfs.

Fault: a run stopped by a full disk (exit 74: 'Free space there ... then resume'), rerun before enough space was freed
(a requeue, or the user freed too little), was refused with 'error: --out RUN is not writable (No space left on device):
the trainer writes its checkpoints, logs and config there. Choose a writable --out'. Another --out starts a new run from
step 0 with the same command, the run's checkpoints unused: a week of training left behind on an advice meant for a
read-only or mistyped folder. A full disk (or a spent quota) now reads as such, with the fix: free space there, then run
the same command again; the run then resumes from its newest checkpoint. The same holds for a filesystem with no inode
left (the startup's first probe of --out, ngpt_ds.train.preflight.check_writable, had said 'choose a writable --out').
"""

import subprocess
import sys

import pytest

from conftest import (
    assert_complete,
    require_system,
    run,
    tiny_ngpt,
    tiny_train,
    train_cmd,
    write_ds_config,
    write_yaml,
)

FULL_DISK_FIX = (
    "its filesystem is full (or your disk quota there is spent). Free space there (or have the quota raised), then run "
    "the same command again"
)


def fill(folder) -> None:
    """Write into `folder`/filler until its filesystem refuses (ENOSPC)."""
    with open(folder / "filler", "wb", buffering=0) as f:  # unbuffered: nothing left for close() to write
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_run_folder_on_a_full_disk_is_told_to_free_space_and_resumes_once_there_is(
    tmp_path, tiny_dataset, mount_tmpfs
):
    disk = mount_tmpfs(8 * 2**20)
    out = disk / "run"
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(2, checkpoint_interval=2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    more = train_cmd(config, ds, tiny_dataset, out, "--max-steps", "4")
    run([sys.executable, *train_cmd(config, ds, tiny_dataset, out)])  # step 2 saved; train.lock emptied at exit
    fill(disk)

    refused = run([sys.executable, *more], check=False)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr, refused.stderr[-3000:]
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert line == f"error: --out {out} is not writable (No space left on device): {FULL_DISK_FIX}", line
    # the old line ended 'Choose a writable --out'
    assert_complete(out / "checkpoints" / "step_00000002")

    (disk / "filler").unlink()
    resumed = run([sys.executable, *more])
    assert f"resumed from {out / 'checkpoints' / 'step_00000002'} at step 2" in resumed.stdout, resumed.stdout[-3000:]
    assert_complete(out / "checkpoints" / "step_00000004")


@pytest.fixture
def few_inodes(tmp_path):
    """A tmpfs of 8 MiB with 64 inodes, unmounted after the test: room for blocks, none for a new file once filled."""
    point = tmp_path / "inodes"
    point.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,nr_inodes=64", "tmpfs", str(point)], capture_output=True, text=True
    )
    require_system(proc.returncode == 0, f"mounting a small tmpfs needs root: {proc.stderr.strip()}")
    yield point
    subprocess.run(["umount", str(point)], check=False)


def test_a_run_folder_without_a_free_inode_is_told_to_free_space_not_to_choose_another_out(
    tmp_path, tiny_dataset, few_inodes
):
    out = few_inodes / "run"
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(2, checkpoint_interval=2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    run([sys.executable, *train_cmd(config, ds, tiny_dataset, out)])
    taken = 0
    while True:  # every inode left taken by an empty file
        try:
            (few_inodes / f"empty{taken}").touch()
        except OSError:
            break
        taken += 1
    assert taken > 0

    refused = run([sys.executable, *train_cmd(config, ds, tiny_dataset, out, "--max-steps", "4")], check=False)
    assert refused.returncode == 2, refused.stderr[-3000:]
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert line == (
        f"error: --out {out} is not writable (cannot create a file in it: No space left on device); {FULL_DISK_FIX}"
    ), line  # the old line ended 'choose a writable --out'
    assert_complete(out / "checkpoints" / "step_00000002")
