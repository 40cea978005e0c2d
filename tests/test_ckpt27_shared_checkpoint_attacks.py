"""A checkpoint folder handed over by someone else, against the start-up repairs and the --out check (helper ckpt27,
session 27): what no older test covered. None of these was a fault; each pins the behaviour down.

- `latest` naming '../../x' or an absolute path: ngpt_ds never follows `latest` (it lists step_N folders, and gives
  DeepSpeed the tag); the start-up repair replaces it with the newest step's name and leaves the named file alone.
- A `latest` naming a folder outside (`../store`) is no evidence of a checkpoints folder for --out.
- A sealed-looking step_N.tmp-save whose COMPLETE is a folder, a named pipe or a link is no finished save: it is not
  put in place, nothing is read through it or waited on, nothing is deleted."""

import os
import threading

import pytest

from ngpt_ds.train import checkpoint_interrupted, out_folder, resume, run_lock
from ngpt_ds.train.manifest import build_manifest, write_manifest

SECRET = "not to be touched\n"


def step(folder, n):
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"w" * 100)
    write_manifest(folder, build_manifest(folder, n))
    return folder


@pytest.mark.parametrize("named", ["../../secret.txt", "ABSOLUTE"])
def test_a_latest_naming_a_path_outside_is_replaced_and_the_path_left_alone(tmp_path, named):
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    before = secret.stat()
    checkpoints = tmp_path / "a" / "run" / "checkpoints"
    step(checkpoints / "step_00000002", 2)
    named = str(secret) if named == "ABSOLUTE" else named
    (checkpoints / "latest").write_text(named)
    shown = named[:80]  # the line shows 80 characters at most: a temporary folder's path may be longer
    assert resume._repair_latest(checkpoints) == (
        f"checkpoints/latest named {shown}: no complete checkpoint has that name here (moved or deleted by hand, or "
        "never one); it names step_00000002 now"
    )
    assert (checkpoints / "latest").read_text() == "step_00000002"
    assert secret.read_text() == SECRET
    assert (secret.stat().st_mtime_ns, secret.stat().st_ino) == (before.st_mtime_ns, before.st_ino)


def test_a_latest_naming_a_folder_outside_is_no_evidence_of_a_checkpoints_folder(tmp_path):
    root = tmp_path.resolve()
    (root / "store").mkdir()
    proj = root / "proj"
    proj.mkdir()
    (proj / "latest").write_text("../store")
    run_lock.acquire(proj / "runs" / "x").release()
    out_folder.check_out_folder(proj)


@pytest.mark.parametrize("kind", ["folder", "fifo", "link"])
def test_a_save_folder_whose_complete_is_no_regular_file_is_not_put_in_place(tmp_path, kind):
    checkpoints = tmp_path / "run" / "checkpoints"
    other = step(tmp_path / "other" / "step_00000004", 4)  # another run's complete step 4
    tmp = checkpoints / "step_00000004.tmp-save"
    tmp.mkdir(parents=True)
    (tmp / "model.pt").write_bytes(b"w" * 100)  # the same weights as the other run's: a link would verify
    if kind == "folder":
        (tmp / "COMPLETE").mkdir()
    elif kind == "fifo":
        os.mkfifo(tmp / "COMPLETE")
    else:
        (tmp / "COMPLETE").symlink_to(other / "COMPLETE")
    done = []
    worker = threading.Thread(target=lambda: done.append(checkpoint_interrupted.recover_interrupted_saves(checkpoints)))
    worker.daemon = True
    worker.start()
    worker.join(30)
    assert done == [[]]  # no line: not a sealed save, nothing renamed
    assert checkpoint_interrupted.to_verify(checkpoints) == []
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000004.tmp-save"]
    assert sorted(p.name for p in tmp.iterdir()) == ["COMPLETE", "model.pt"]
    assert (other / "model.pt").read_bytes() == b"w" * 100
