"""Whether a folder holding only a stale writer.lock is a checkpoint store (helper ckpt28, session 28): it is, and
stays refused as --out and as a parent of --out. A decision, pinned here with the evidence; no fault fixed.

Evidence: a run whose checkpoints/ links to a folder takes writer.lock there (ngpt_ds.train.run_lock) and leaves
it, emptied, when it stops; a run that stops (or is killed) before its first save leaves that folder holding
writer.lock alone, while its link still stands, so its next save lands there. A clean exit empties the file, so it
does not name the runs that link there (several may have, one after the other), and nothing else does: no check
can show that no run links there any more. Accepted, a run started in that folder meets the linked run's
checkpoints beside its own files, and `--resume <that folder>` then names the linked run's newest step, not the
new run's (resume.named_checkpoint takes step_N folders in the folder before its checkpoints/)."""

import os
import socket
import subprocess
import sys

import pytest
from test_out25_checkpoint_store_out import fake_step, refusal

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import out_folder, run_lock
from ngpt_ds.train.resume import named_checkpoint


def linked_run(tmp_path):
    store, a = tmp_path / "store", tmp_path / "a"
    store.mkdir()
    a.mkdir()
    (a / "checkpoints").symlink_to(store, target_is_directory=True)
    return store, a


def refused(out) -> str:
    with pytest.raises(NgptConfigError) as err:
        out_folder.check_out_folder(out)
    return str(err.value)


def test_a_linked_run_stopped_before_its_first_save_leaves_writer_lock_alone_and_the_folder_stays_refused(tmp_path):
    tmp_path = tmp_path.resolve()
    store, a = linked_run(tmp_path)
    run_lock.acquire(a).release()  # a run of a that stopped before its first save
    assert sorted(os.listdir(store)) == ["writer.lock"]
    assert (store / "writer.lock").read_text() == ""  # emptied: it names no run that links here
    assert refused(store) == refusal(store, "writer.lock")
    assert refused(store / "new").startswith(f"--out {store / 'new'} is inside {store}, a checkpoints folder (it ")
    assert (a / "checkpoints").resolve() == store  # a's next save lands there


def test_a_killed_linked_runs_writer_lock_naming_it_keeps_the_folder_refused(tmp_path):
    """writer.lock naming a dead holder (a kill before the first save): the lock is stale, the link stands."""
    tmp_path = tmp_path.resolve()
    store, a = linked_run(tmp_path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (store / "writer.lock").write_text(f"host={socket.gethostname()} pid={gone.stdout.strip()} out={a}\n")
    assert refused(store) == refusal(store, "writer.lock")
    lock = run_lock.acquire(a)  # a itself takes the stale lock over and goes on
    assert lock.note is not None and lock.note.startswith("took over the stale lock of host=")
    lock.release()


def test_accepted_there_a_run_would_lose_its_checkpoints_to_the_linked_runs_on_a_resume_of_its_folder(tmp_path):
    """What refusing prevents: a run R in the store folder (its own checkpoints/step_4), then the linked run's save
    of step 2 there. `--resume <store>` names the linked run's step_2, not R's step_4."""
    tmp_path = tmp_path.resolve()
    store, a = linked_run(tmp_path)
    run_lock.acquire(a).release()
    (store / "config.yaml").write_text("config_source: tiny.yaml\nmodel: {}\ntrain: {}\n")  # R, had it been accepted
    fake_step(store / "checkpoints" / "step_00000004")
    fake_step(a / "checkpoints" / "step_00000002")  # a's first save, through its link
    assert named_checkpoint(tmp_path / "new", str(store)) == store / "step_00000002"
