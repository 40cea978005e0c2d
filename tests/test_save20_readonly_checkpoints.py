"""A run folder whose checkpoints/ cannot take a new entry (made read-only or immutable to keep its checkpoints,
or a link to a read-only mount), while --out itself is writable."""

import os
import subprocess

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import run_lock

from conftest import require_system


@pytest.fixture
def freeze(tmp_path):
    """freeze(folder): no new entry can be made in `folder` by this process (chattr +i as root, whom permission
    bits do not stop; else chmod 555). Undone at the end of the test."""
    frozen = []

    def freeze(folder):
        if os.geteuid() == 0:
            done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
            require_system(done.returncode == 0, f"chattr +i needs a filesystem with the flag: {done.stderr.strip()}")
        else:
            folder.chmod(0o555)
        frozen.append(folder)
        return os.strerror(1 if os.geteuid() == 0 else 13)

    yield freeze
    for folder in frozen:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        else:
            folder.chmod(0o755)


def test_a_checkpoints_folder_that_cannot_take_a_new_checkpoint_is_refused_at_startup(tmp_path, freeze):
    """Fault: the startup checks probed only --out (preflight, train.lock), so a run whose <out>/checkpoints had been
    made read-only (or immutable) trained a whole checkpoint_interval and then stopped at its first save, exit 74
    ('writing .../step_N.tmp-save: Operation not permitted'), the interval's training lost.
    Before: run_lock.acquire returned the lock. Now: it refuses the run naming checkpoints/ and the fix, and leaves
    the lock free and no train.lock of its own."""
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(parents=True)
    reason = freeze(checkpoints)
    with pytest.raises(NgptConfigError) as refused:
        run_lock.acquire(out).release()
    assert str(refused.value) == (
        f"{checkpoints} is not writable ({reason}): every checkpoint of the run is saved there, and the first save "
        "would fail after train.checkpoint_interval steps. Make it writable (chmod u+w, chattr -i), or run in a "
        f"new --out with --resume {checkpoints}/step_N"
    )
    assert os.listdir(checkpoints) == []  # the probe left nothing
    assert not (out / run_lock.LOCK_FILE).exists()  # the refused run removed the train.lock it created
    with run_lock.unless_in_use(out) as ours:
        assert ours is True  # the refused run holds no lock


def test_a_writable_checkpoints_folder_or_none_yet_is_taken(tmp_path):
    out = tmp_path / "run"
    lock = run_lock.acquire(out)  # no checkpoints/ yet: the first save creates it in the writable --out
    assert lock.note is None
    lock.release()
    (out / "checkpoints").mkdir()
    run_lock.acquire(out).release()
    assert os.listdir(out / "checkpoints") == []


def test_a_checkpoints_link_to_nothing_or_a_checkpoints_file_is_refused_at_startup(tmp_path):
    """Fault: <out>/checkpoints linked to storage that is not there (not mounted on this node, purged), or a file of
    that name, passed the startup checks; the run trained a whole checkpoint_interval and its first save stopped it
    with 'cannot prepare .../checkpoints for the checkpoint of step N: File exists (.../checkpoints)' (exit 74).
    Before: run_lock.acquire returned the lock. Now: it refuses the run naming the link's target, or the file."""
    out = tmp_path / "run"
    out.mkdir()
    target = tmp_path / "scratch" / "ckpts"
    (out / "checkpoints").symlink_to(target, target_is_directory=True)
    with pytest.raises(NgptConfigError) as refused:
        run_lock.acquire(out).release()
    assert str(refused.value) == (
        f"{out / 'checkpoints'} is a symbolic link to {target}, which does not exist (storage not mounted on this "
        "node, or purged): every checkpoint of the run is saved there. Create that folder, or remove the link"
    )
    target.mkdir(parents=True)
    run_lock.acquire(out).release()  # the link's folder is there now
    (out / "checkpoints").unlink()
    (out / "checkpoints").write_text("")
    with pytest.raises(NgptConfigError) as refused:
        run_lock.acquire(out).release()
    assert str(refused.value) == (
        f"{out / 'checkpoints'} is not a folder: every checkpoint of the run is saved there. Move it away"
    )


def test_a_train_lock_copied_from_under_a_running_trainer_is_not_called_a_dead_ones(tmp_path):
    """Fault: a run folder copied (cp -a, rsync) while its trainer ran carries a train.lock naming that trainer; a run
    started in the copy took it over with 'took over the stale lock of host=H pid=P (its lock was released; it ended
    without releasing it)', though P was running. Before: that line. Now: it says the file was copied."""
    import socket

    out = tmp_path / "copy"
    out.mkdir()
    running = subprocess.Popen(["sleep", "60"])
    try:
        holder = f"host={socket.gethostname()} pid={running.pid}"
        (out / run_lock.LOCK_FILE).write_text(holder + "\n")
        lock = run_lock.acquire(out)
        lock.release()
    finally:
        running.kill()
        running.wait()
    assert lock.note == (
        f"took over {out / run_lock.LOCK_FILE}, which names {holder}: that process is still running but holds no "
        "lock here, so the file was copied from another run folder"
    )
