"""A named pipe at the names of the run folder that the trainer's lock reads first: config.yaml, train.lock
(ngpt_ds.train.run_lock)."""

import os

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import run_lock

from conftest import fails_after


@pytest.fixture
def alarm():
    with fails_after(20, "a named pipe was opened for reading"):
        yield


def test_a_named_pipe_at_config_yaml_is_refused_not_waited_on(tmp_path, alarm):
    """Fault: the check of --out read <out>/config.yaml with a plain open, which waits for a writer: a named
    pipe there (a folder someone handed over) hung rank 0 at startup for good, without a line, and the other
    ranks in their first collective. Now it is not read, and a folder that is no run folder is refused."""
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "config.yaml")
    with pytest.raises(NgptConfigError, match=r"holds a config\.yaml the trainer did not write"):
        run_lock.acquire(out)
    assert not (out / "train.lock").exists()


def test_a_named_pipe_at_config_yaml_of_a_run_folder_is_taken_as_cut_short(tmp_path, alarm):
    """In a run folder (its train.lock) the pipe is read as a config.yaml a kill cut short: the run goes on,
    and the trainer replaces that name with its effective config."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.lock").write_text("")
    os.mkfifo(out / "config.yaml")
    lock = run_lock.acquire(out)
    try:
        assert (out / "train.lock").read_text() == run_lock._holder() + "\n"
    finally:
        lock.release()


def test_a_named_pipe_at_train_lock_is_refused_with_the_fix(tmp_path, alarm):
    """Fault: a named pipe at <out>/train.lock ended rank 0 in a traceback, 'OSError: [Errno 29] Illegal seek'
    (its read of the holder's name), with exit 1 (the other ranks waited for it in a collective). Now every rank
    gets one error naming the file and the fix; the repairs before the lock leave such a folder alone."""
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "train.lock")
    with pytest.raises(NgptConfigError) as refused:
        run_lock.acquire(out)
    assert str(refused.value) == (
        f"--out {out}: train.lock is a named pipe, not a regular file; the trainer locks train.lock and writes its "
        "name into it. Remove it, then run again"
    )
    with run_lock.unless_in_use(out) as ours:
        assert ours is False
