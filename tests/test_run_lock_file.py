"""<out>/train.lock as a run folder someone handed over may hold it: a planted link, a crafted holder line."""

import os
import socket

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import run_lock


def test_a_train_lock_planted_as_a_link_is_refused_and_its_target_left_alone(tmp_path):
    """Fault: acquire opened train.lock following a link and wrote its holder line through it: a link to a file of
    the user's was emptied and overwritten by every run (as root: any file)."""
    out = tmp_path / "run"
    run_lock.acquire(out).release()  # a run folder
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out / run_lock.LOCK_FILE).unlink()
    (out / run_lock.LOCK_FILE).symlink_to(victim)
    with pytest.raises(NgptConfigError) as refused:
        run_lock.acquire(out)
    assert str(refused.value) == (
        f"--out {out}: {run_lock.LOCK_FILE} is a symbolic link (to {victim}); the trainer writes its name into "
        f"{run_lock.LOCK_FILE} and would write through the link. Remove the link, then run again"
    )
    with run_lock.unless_in_use(out) as ours:
        assert ours is False  # no repair in a folder whose lock cannot be taken
    assert victim.read_text() == "precious\n"


def test_a_holder_line_with_digits_of_another_script_is_taken_over(tmp_path):
    """Fault: a lock file naming `pid=²` on this host (str.isdigit takes superscripts) ended the trainer in a
    ValueError from int() at startup."""
    out = tmp_path / "run"
    run_lock.acquire(out).release()
    (out / run_lock.LOCK_FILE).write_text(f"host={socket.gethostname()} pid=\u00b2\n")
    lock = run_lock.acquire(out)
    try:
        assert (
            lock.note
            == f"took over the stale lock of host={socket.gethostname()} pid=\u00b2 (its lock was released; it ended without releasing it)"
        )
        assert (out / run_lock.LOCK_FILE).read_text() == f"host={socket.gethostname()} pid={os.getpid()}\n"
    finally:
        lock.release()
