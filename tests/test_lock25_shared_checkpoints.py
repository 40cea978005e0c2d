"""One writer per checkpoints folder (fault: two --out whose checkpoints/ are links to one folder, a shared
checkpoint store or a run folder copied with `cp -a` that kept its link, were not locked against each other: the
lock was <out>/train.lock only, so both trainers saved, rotated and deleted checkpoints in the same folder).

The holder is this test process or a helper process, through the trainer's own lock (ngpt_ds.train.run_lock);
the refused trainer is a real 2-rank gloo job (launch/train.py), as in tests/test_checkpoint_lock.py."""

import os
import re
import socket
import subprocess
import sys

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import run_lock

from conftest import start_ranks, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml

MODEL = tiny_ngpt()
TRAIN = tiny_train(4, checkpoint_interval=2, keep_checkpoints=1, dist_timeout_s=60)
HOST = socket.gethostname()
BUSY_FIX = "Wait for it to finish or stop it, or give this run a checkpoints/ of its own"


def linked_run(folder, store):
    """A run folder whose checkpoints/ is a link to `store`."""
    folder.mkdir()
    (folder / "checkpoints").symlink_to(store)
    return folder


def refused_trainer(tmp_path, tiny_dataset, out) -> list[str]:
    """Start a 2-rank trainer on `out`; both ranks must exit 2 without a traceback. Returns each rank's stderr."""
    config = write_yaml(tmp_path / "tiny.yaml", MODEL, TRAIN)
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    ranks = start_ranks(train_cmd(config, ds, tiny_dataset, out))
    results = [proc.communicate(timeout=300) for proc in ranks]
    for rank, (proc, (_, stderr)) in enumerate(zip(ranks, results)):
        assert proc.returncode == 2, (rank, stderr[-3000:])
        assert "Traceback" not in stderr
    return [stderr for _, stderr in results]


def test_second_trainer_whose_checkpoints_links_to_a_held_store_exits_2_naming_store_and_holder(tmp_path, tiny_dataset):
    """Fault: runs a and b, whose checkpoints/ both link to one store, each took its own train.lock and b trained
    and saved into a's checkpoints (exit 0). Now b exits 2 on every rank, before building anything, naming the
    store and a's holder line (host, pid, --out), and writes nothing into the store."""
    tmp_path = tmp_path.resolve()  # the messages name resolved folders
    store = tmp_path / "store"
    store.mkdir()
    a, b = linked_run(tmp_path / "a", store), linked_run(tmp_path / "b", store)
    holder = run_lock.acquire(a)  # no read of its lock files here: closing any descriptor of one drops the lock
    try:
        stderrs = refused_trainer(tmp_path, tiny_dataset, b)
    finally:
        holder.release()
    expected = (
        f"error: --out {b}: its checkpoints folder {store} (checkpoints/ links there) is in use by another trainer "
        f"(host={HOST} pid={os.getpid()} out={a.resolve()}; lock file {store / run_lock.STORE_LOCK}). {BUSY_FIX}"
    )
    for stderr in stderrs:
        assert expected in stderr.splitlines(), stderr[-3000:]
    assert sorted(p.name for p in store.iterdir()) == [run_lock.STORE_LOCK]  # no checkpoint of b's
    assert (store / run_lock.STORE_LOCK).read_text() == ""  # released: emptied, as train.lock
    assert sorted(p.name for p in b.iterdir()) == ["checkpoints"]  # b removed the train.lock it created


def test_second_trainer_whose_checkpoints_links_to_a_running_runs_own_checkpoints_exits_2(tmp_path, tiny_dataset):
    """Fault: `ln -s ../a/checkpoints b/checkpoints` while a runs (a's checkpoints/ a folder of its own, locked by
    a's train.lock only): b trained into a's checkpoints. Now b exits 2 naming the folder, a and a's holder."""
    tmp_path = tmp_path.resolve()  # the messages name resolved folders
    a = tmp_path / "a"
    (a / "checkpoints").mkdir(parents=True)
    b = linked_run(tmp_path / "b", a / "checkpoints")
    holder = run_lock.acquire(a)
    try:
        assert sorted(os.listdir(a / "checkpoints")) == []  # a folder of a's own: a writes nothing into it
        stderrs = refused_trainer(tmp_path, tiny_dataset, b)
    finally:
        holder.release()
    expected = (
        f"error: --out {b}: its checkpoints folder {a / 'checkpoints'} (checkpoints/ links there) is in use by the "
        f"trainer of --out {a} (host={HOST} pid={os.getpid()}; lock file {a / 'train.lock'}). {BUSY_FIX}"
    )
    for stderr in stderrs:
        assert expected in stderr.splitlines(), stderr[-3000:]
    assert os.listdir(a / "checkpoints") == []  # b was refused before creating writer.lock


def test_run_with_its_own_checkpoints_is_refused_while_a_run_linking_there_holds_it(tmp_path, hold):
    """The other order: b (checkpoints/ a link to a's) runs; a, whose checkpoints/ is its own folder, must not start
    in it, and `unless_in_use` (resume's repairs in checkpoints/) must not touch it either, for a nor b."""
    tmp_path = tmp_path.resolve()  # the messages name resolved folders
    a = tmp_path / "a"
    (a / "checkpoints").mkdir(parents=True)
    b = linked_run(tmp_path / "b", a / "checkpoints")
    pid = hold(b)
    with pytest.raises(NgptConfigError) as refused:
        run_lock.acquire(a)
    lock_file = a / "checkpoints" / run_lock.STORE_LOCK
    assert str(refused.value) == (
        f"--out {a}: its checkpoints folder {a / 'checkpoints'} is in use by another trainer, whose checkpoints/ "
        f"links there (host={HOST} pid={pid} out={b.resolve()}; lock file {lock_file}). Wait for it to finish or "
        "stop it, or choose another --out"
    )
    with run_lock.unless_in_use(a) as ours:
        assert ours is False
    with run_lock.unless_in_use(a, checkpoints=False) as ours:  # a's own train.lock alone is free
        assert ours is True


def test_unless_in_use_of_a_linked_run_sees_the_owner_and_other_linked_runs(tmp_path, hold):
    """resume.py puts back a checkpoint moved aside only `unless_in_use(out)`: with a checkpoints/ link, a trainer of
    another --out writing in the same folder (the owner of that checkpoints/, or another run linking there) makes it
    False; once they end, True."""
    tmp_path = tmp_path.resolve()  # the messages name resolved folders
    a = tmp_path / "a"
    (a / "checkpoints").mkdir(parents=True)
    b = linked_run(tmp_path / "b", a / "checkpoints")
    c = linked_run(tmp_path / "c", a / "checkpoints")
    with run_lock.unless_in_use(b) as ours:
        assert ours is True
    hold(a)
    with run_lock.unless_in_use(b) as ours:
        assert ours is False
    with pytest.raises(NgptConfigError, match=re.escape(f"is in use by the trainer of --out {a} ")):
        run_lock.acquire(c)


def test_stale_checkpoints_lock_of_a_dead_trainer_is_taken_over(tmp_path):
    """A trainer killed while holding the store's lock left writer.lock naming it: the kernel freed the lock, so the
    next run takes it over with the same message as a stale train.lock, and names itself there."""
    tmp_path = tmp_path.resolve()  # the messages name resolved folders
    store = tmp_path / "store"
    store.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (store / run_lock.STORE_LOCK).write_text(f"host={HOST} pid={gone.pid} out=/elsewhere\n")
    b = linked_run(tmp_path / "b", store)
    lock = run_lock.acquire(b)
    try:
        assert lock.note == (
            f"took over the stale lock of host={HOST} pid={gone.pid} (no longer running; it ended without releasing it)"
        )
        written = os.pread(lock.store_fd, 4096, 0).decode()  # not a new descriptor: closing it would drop the lock
        assert written == f"host={HOST} pid={os.getpid()} out={b.resolve()}\n"
    finally:
        lock.release()
    assert (store / run_lock.STORE_LOCK).read_text() == ""
    lock = run_lock.acquire(b)  # released: the same run starts again, without a note
    assert lock.note is None
    lock.release()


def test_run_with_its_own_checkpoints_writes_no_lock_file_into_them(tmp_path):
    """The common case is unchanged: a checkpoints/ of the run's own gets no new file (listings, retention and
    `COMPLETE` manifests see what they saw), and a writer.lock that no process holds does not refuse it."""
    tmp_path = tmp_path.resolve()  # the messages name resolved folders
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    lock = run_lock.acquire(out)
    assert lock.note is None
    assert os.listdir(out / "checkpoints") == []
    lock.release()
    (out / "checkpoints" / run_lock.STORE_LOCK).write_text(f"host={HOST} pid=1 out=/elsewhere\n")  # left by a link
    run_lock.acquire(out).release()
    with run_lock.unless_in_use(out) as ours:
        assert ours is True
