"""A kill between a save's two renames never turns a copied-in step_N into this run's (helper save25).

Fault: a step_N folder put in checkpoints/ during the run (a user's copy of another run's step N) under the
step the run was about to save was first renamed to step_N.tmp-replaced, the name under which a second save
of the run's own step waits, and only after the new one took step_N renamed to step_N.not-this-run-<time>.
A kill between the save's two renames left the copy as step_N.tmp-replaced and no step_N; the next start-up
(resume.resolve_resume_on_all_ranks, and the dry run's resolve_resume) put it back under step_N and
--resume auto resumed another run's checkpoint as this run's step N. The save now renames such a folder
straight to its kept name.

Run as a script, this file is the child process that saves and is killed (os._exit) at that very point.
"""

import os
import re
import sys
from pathlib import Path

from rank0_saves import WEIGHTS, checkpoint_files, rank0_save

from ngpt_ds.train import manifest
from ngpt_ds.train.resume import resolve_resume

from conftest import REPO, run, torchrun

HERE = Path(__file__)
RESUME_WORKER = REPO / "tests" / "workers" / "checkpoint_fault_worker.py"
KEPT = re.compile(r"step_00000004\.not-this-run-\d{8}T\d{6}Z")
KILLED_STATUS = 9


def _run_killed_while_saving(checkpoints: Path) -> None:
    """The run saves step 2; a user copies another run's step 4 in; the run's save of step 4 is killed right
    after the first rename that moves the copy out of step_00000004, before its own folder takes the name."""
    rank0_save(checkpoints, 2, b"2" * 1000)
    copy = checkpoint_files(checkpoints / "step_00000004", b"U" * 1500)
    manifest.write_manifest(copy, manifest.build_manifest(copy, 4))
    rename = os.rename

    def killed_after_moving_the_copy_out(src, dst):
        rename(src, dst)
        if Path(src) == copy:
            os._exit(KILLED_STATUS)  # no cleanup, no finally: as SIGKILL

    os.rename = killed_after_moving_the_copy_out
    rank0_save(checkpoints, 4, b"R" * 1000)
    print("not killed", flush=True)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _chose(proc) -> list[str]:
    return sorted(line for line in proc.stdout.splitlines() if " chose: " in line)


def test_a_kill_between_the_renames_never_puts_a_copied_in_step_back_as_this_runs(tmp_path):
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    killed = run([sys.executable, str(HERE), str(checkpoints)], cwd=REPO / "tests", check=False)
    assert killed.returncode == KILLED_STATUS and "not killed" not in killed.stdout, killed.stdout + killed.stderr
    left = _names(checkpoints)
    copies = [n for n in left if KEPT.fullmatch(n) or n == "step_00000004.tmp-replaced"]
    assert len(copies) == 1 and "step_00000004" not in left, left
    copy_digest = manifest.marker_digest(checkpoints / copies[0])
    assert (checkpoints / copies[0] / WEIGHTS).read_bytes() == b"U" * 1500

    # The dry run (read-only) and the run's start-up (2 ranks) both resume this run's own sealed save of step 4
    # (put in place from step_00000004.tmp-save, save26), never the copy.
    notes: list[str] = []
    assert resolve_resume(out, "auto", notes.append) == checkpoints / "step_00000004.tmp-save"
    chosen = torchrun(RESUME_WORKER, out, "resume", 0, "-")
    assert _chose(chosen) == ["rank 0 chose: step_00000004", "rank 1 chose: step_00000004"]
    assert (checkpoints / "step_00000004" / WEIGHTS).read_bytes() == b"R" * 1000  # the run's, not the copy
    assert (checkpoints / "latest").read_text() == "step_00000004"

    # The run trains on and saves step 6: its own steps in place, the copy kept whole, nothing lost.
    saved = torchrun(RESUME_WORKER, out, "save", 6, "C", nproc=1)
    assert [line for line in saved.stdout.splitlines() if " saved: " in line] == ["rank 0 saved: step_00000006"]
    names = _names(checkpoints)
    kept = [n for n in names if KEPT.fullmatch(n)]
    assert len(kept) == 1 and names == sorted(["latest", "step_00000002", "step_00000004", "step_00000006", kept[0]])
    assert manifest.marker_digest(checkpoints / kept[0]) == copy_digest
    assert (checkpoints / kept[0] / WEIGHTS).read_bytes() == b"U" * 1500
    assert manifest.verify(checkpoints / kept[0]) is None
    assert (checkpoints / "step_00000004" / WEIGHTS).read_bytes() == b"R" * 1000
    assert (checkpoints / "latest").read_text() == "step_00000006"


def test_a_kill_between_the_renames_of_the_runs_own_second_save_puts_its_step_back(tmp_path):
    """What the fix keeps: the run's own step_N (saved by this process), moved aside by a second save of step N
    that is killed between the renames, is put back at the next start-up, as before."""
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    killed = run([sys.executable, str(HERE), str(checkpoints), "own"], cwd=REPO / "tests", check=False)
    assert killed.returncode == KILLED_STATUS, killed.stdout + killed.stderr
    assert _names(checkpoints) == ["latest", "step_00000004.tmp-replaced", "step_00000004.tmp-save"]
    chosen = torchrun(RESUME_WORKER, out, "resume", 0, "-")
    assert _chose(chosen) == ["rank 0 chose: step_00000004", "rank 1 chose: step_00000004"]
    # the second save, sealed before the kill, is put in place (save26); the step it replaced is removed
    assert (checkpoints / "step_00000004" / WEIGHTS).read_bytes() == b"B" * 1000
    assert manifest.verify(checkpoints / "step_00000004") is None
    assert _names(checkpoints) == ["latest", "step_00000004"]


def _own_second_save_killed(checkpoints: Path) -> None:
    rank0_save(checkpoints, 4, b"A" * 1000)
    own = checkpoints / "step_00000004"
    rename = os.rename

    def killed_after_moving_aside(src, dst):
        rename(src, dst)
        if Path(src) == own:
            os._exit(KILLED_STATUS)

    os.rename = killed_after_moving_aside
    rank0_save(checkpoints, 4, b"B" * 1000)
    print("not killed", flush=True)


if __name__ == "__main__":
    if sys.argv[2:] == ["own"]:
        _own_second_save_killed(Path(sys.argv[1]))
    else:
        _run_killed_while_saving(Path(sys.argv[1]))
