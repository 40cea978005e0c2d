"""--out and --data on filesystems that lack a call the trainer makes. No file locks: NFSv3 without a reachable
lock daemon answers lockf with ENOLCK, Lustre mounted without `flock` answers flock with ENOSYS. No fsync of a
folder: CIFS/SMB mounts (Azure Files) and some FUSE filesystems answer EINVAL. Each test makes the call fail
the way such a filesystem does."""

import errno
import fcntl
import json
import os
import subprocess
import sys

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import checkpoint, run_lock

from conftest import cpu_env, read_metrics, tiny_ngpt, tiny_train, train_run, write_ds_config, write_yaml


def no_locks(fd, *args):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_acquire_without_file_locks_warns_and_refuses_only_a_running_holder_of_this_host(tmp_path, monkeypatch):
    """Fault: on a filesystem without locks every `acquire` said "--out ... is in use by another trainer (a
    process that has not written its name yet ...)", so no run could start there. Now it runs unlocked with a
    warning naming the error, refuses a lock file that names a running process of this host, and takes over one
    that names a process that has ended."""
    monkeypatch.setattr(fcntl, "lockf", no_locks)
    out = tmp_path / "run"
    lock = run_lock.acquire(out)
    assert lock.note == (
        f"warning: the filesystem of --out {out} gives no file locks (lockf: No locks available): this run is not "
        "locked there, and a second trainer started on this --out from another node would not be refused. "
        "Start one trainer per --out"
    )
    assert (out / run_lock.LOCK_FILE).read_text() == f"host={run_lock.socket.gethostname()} pid={os.getpid()}\n"
    with run_lock.unless_in_use(out) as ours:  # the file names this process: no other trainer
        assert ours is True
    lock.release()

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = f"host={run_lock.socket.gethostname()} pid={other.pid}"
        (out / run_lock.LOCK_FILE).write_text(holder + "\n")
        with pytest.raises(NgptConfigError) as refused:
            run_lock.acquire(out)
        with run_lock.unless_in_use(out) as ours:
            assert ours is False
    finally:
        other.kill()
        other.wait()
    path = out / run_lock.LOCK_FILE
    assert str(refused.value) == (
        f"--out {out} is in use by another trainer ({holder}; this filesystem gives no locks (lockf: No locks "
        f"available), so the process the file names was looked up: if it is not a trainer, empty {path}; lock "
        f"file {path}). Wait for it to finish or stop it, or choose another --out"
    )
    before = open_descriptors()
    lock = run_lock.acquire(out)  # that process has ended
    assert lock.note is not None and lock.note.startswith("warning: the filesystem of --out")
    lock.release()
    assert open_descriptors() == before


def test_acquire_still_refuses_a_lock_another_process_holds(tmp_path):
    """The same message as before for a lock that is held (lockf answers EAGAIN or EACCES), not the warning."""
    out = tmp_path / "run"
    run_lock.acquire(out).release()
    script = "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.lockf(fd, fcntl.LOCK_EX); print(1, flush=True); sys.stdin.read()"
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(out / run_lock.LOCK_FILE)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "1"
        with pytest.raises(NgptConfigError, match=r"is in use by another trainer \(a process that has not written"):
            run_lock.acquire(out)
    finally:
        holder.communicate("")


@pytest.mark.filterwarnings("ignore:flock not supported")  # datasets' own lock falls back to a lock file
def test_a_dataset_prepared_without_flock_holds_only_its_files_and_leaks_no_descriptor(tmp_path, monkeypatch):
    """Fault: where flock answers ENOSYS the staging folder kept its unlocked `.owner.new`, which was published
    inside the dataset, and its descriptor stayed open for the life of the process."""
    from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset

    def no_flock(fd, operation):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": f"document {i}: " + "the quick brown fox " * 40}) + "\n" for i in range(40))
    )
    monkeypatch.setattr(fcntl, "flock", no_flock)
    before = open_descriptors()
    config = PrepareConfig(
        inputs=(str(corpus),), out=tmp_path / "data", vocab_size=300, val_fraction=0.1, workers=1, progress=False
    )
    data = prepare_dataset(config)
    assert open_descriptors() == before
    assert sorted(p.name for p in data.iterdir()) == [
        "meta.json",
        "tokenizer.model",
        "train_000000.bin",
        "validation_000000.bin",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "data"]


NO_LOCKS = """
import errno, fcntl, os
def lockf(fd, *args):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
fcntl.lockf = lockf
"""
NO_FOLDER_FSYNC = """
import errno, os, stat
real_fsync = os.fsync
def fsync(fd):
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    return real_fsync(fd)
os.fsync = fsync
"""


@pytest.mark.parametrize("lacking", ["locks", "folder fsync"])
def test_the_trainer_checkpoints_and_resumes_on_an_out_without(tmp_path, tiny_dataset, lacking):
    """The whole trainer where every lockf answers ENOLCK, or every fsync of a folder EINVAL (a sitecustomize
    makes them so): it trained, checkpointed, and the rerun found the run finished and rewrote its summary.
    Faults: without locks it stopped at startup ("--out ... is in use by another trainer"); without folder
    fsync at its first save ("checkpoint of step 2 not saved: finishing ...: Invalid argument")."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_LOCKS if lacking == "locks" else NO_FOLDER_FSYNC)
    env = cpu_env()
    env["PYTHONPATH"] = f"{site}{os.pathsep}{env['PYTHONPATH']}"
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(4, checkpoint_interval=2, log_interval=2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    out = tmp_path / "run"
    first = train_run(config, ds, tiny_dataset, out, env=env)
    warning = f"warning: the filesystem of --out {out} gives no file locks (lockf: No locks available)"
    assert (first.stdout + first.stderr).count(warning) == (1 if lacking == "locks" else 0)
    assert [m["step"] for m in read_metrics(out)] == [2, 4]
    assert checkpoint.complete_checkpoints(out / checkpoint.CHECKPOINTS) == [
        out / checkpoint.CHECKPOINTS / checkpoint.tag_for(step) for step in (2, 4)
    ]
    for step in (2, 4):
        assert checkpoint.verify(out / checkpoint.CHECKPOINTS / checkpoint.tag_for(step)) is None
    (out / "summary.json").unlink()
    train_run(config, ds, tiny_dataset, out, env=env)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["step"]) == ("finished", 4)
