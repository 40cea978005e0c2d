"""A kill during the last renames of a save (ngpt_ds.train.checkpoint_interrupted). Faults:

- a save killed once sealed (every file hashed, the COMPLETE manifest written) but before step_N.tmp-save was
  renamed to step_N was lost: the next start-up resumed from the step before, or put the older step_N back, and
  the next save deleted the finished one as a leftover;
- a second save of a step killed after the new step_N took its name left the run's own replaced step as
  step_N.tmp-replaced, which the next save kept as step_N.not-this-run-<time>, a full duplicate, with a warning
  that this run had not written it.
"""

import re

from ngpt_ds.train import checkpoint, manifest
from ngpt_ds.train.resume import resolve_resume

from conftest import REPO, torchrun

WORKER = REPO / "tests" / "workers" / "save26_kill_worker.py"
MODEL_FILE = "mp_rank_00_model_states.pt"


def lines(proc, word):
    return [line for line in proc.stdout.splitlines() if f" {word}: " in line]


def names(checkpoints):
    return sorted(re.sub(r"-\d{8}T\d{6}Z", "-<time>", p.name) for p in checkpoints.iterdir())


def killed(out, action, step, payload):
    proc = torchrun(WORKER, out, action, step, payload, nproc=1, check=False)
    assert proc.returncode != 0 and not lines(proc, "saved"), proc.stdout[-2000:]


def test_a_first_save_killed_after_its_seal_is_put_in_place_not_lost(tmp_path):
    """Fault: the finished save of step 4, sealed but not yet renamed, was passed over (--resume auto chose
    step_2) and deleted by the next save. Old code: 'rank 0 chose: step_00000002'."""
    out, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    torchrun(WORKER, out, "save", 2, "A", nproc=1)
    killed(out, "save-killed-sealed", 4, "B")
    assert names(checkpoints) == ["latest", "step_00000002", "step_00000004.tmp-save"]
    notes: list[str] = []  # the dry run (read-only) plans the same resume
    assert resolve_resume(out, "auto", notes.append) == checkpoints / "step_00000004.tmp-save"
    assert notes == [
        "note: the run will first put step_00000004 in place from step_00000004.tmp-save (a sealed save, interrupted)"
    ]
    assert names(checkpoints) == ["latest", "step_00000002", "step_00000004.tmp-save"]
    chosen = torchrun(WORKER, out, "resume", 0, "-")
    assert lines(chosen, "chose") == ["rank 0 chose: step_00000004", "rank 1 chose: step_00000004"]
    assert lines(chosen, "warned") == [
        "rank 0 warned: warning: put step_00000004 in place from step_00000004.tmp-save: its save was sealed "
        "complete (every file verified against its COMPLETE manifest) when it was interrupted before the rename"
    ]
    step4 = checkpoints / "step_00000004"
    assert (step4 / MODEL_FILE).read_bytes() == b"B" * 1000 and manifest.verify(step4) is None
    assert (checkpoints / "latest").read_text() == "step_00000004"
    torchrun(WORKER, out, "save", 6, "C", nproc=1)
    assert names(checkpoints) == ["latest", "step_00000002", "step_00000004", "step_00000006"]
    assert (step4 / MODEL_FILE).read_bytes() == b"B" * 1000


def test_a_second_save_killed_between_its_renames_puts_the_new_step_in_place(tmp_path):
    """Fault: a second save of step 4 killed after moving the old step_4 aside: the start-up put the OLD step_4
    back and the next save deleted the finished new one. Old code: step_4 held b'A' (the replaced save)."""
    out, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    torchrun(WORKER, out, "save", 4, "A", nproc=1)
    killed(out, "second-killed-between", 4, "B")
    assert names(checkpoints) == ["latest", "step_00000004.tmp-replaced", "step_00000004.tmp-save"]
    assert resolve_resume(out, "auto", lambda line: None) == checkpoints / "step_00000004.tmp-save"
    chosen = torchrun(WORKER, out, "resume", 0, "-")
    assert lines(chosen, "chose") == ["rank 0 chose: step_00000004", "rank 1 chose: step_00000004"]
    assert lines(chosen, "warned") == [
        "rank 0 warned: warning: put step_00000004 in place from step_00000004.tmp-save: its save was sealed "
        "complete (every file verified against its COMPLETE manifest) when it was interrupted before the rename",
        "rank 0 warned: warning: removed step_00000004.tmp-replaced: the version of step_00000004 that the run's "
        "second save of step 4 replaced (a kill came after the new one was in place, which is verified complete)",
    ]
    step4 = checkpoints / "step_00000004"
    assert (step4 / MODEL_FILE).read_bytes() == b"B" * 1000 and manifest.verify(step4) is None
    assert names(checkpoints) == ["latest", "step_00000004"]
    assert (checkpoints / "latest").read_text() == "step_00000004"


def test_a_second_save_killed_before_moving_the_old_step_aside_puts_the_new_step_in_place(tmp_path):
    """The same save killed one rename earlier: the old step_4 still in place beside the sealed new one, whose
    manifest names the step it replaces. Old code: step_4 held b'A' and the next save deleted b'B'."""
    out, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    torchrun(WORKER, out, "save", 4, "A", nproc=1)
    killed(out, "second-killed-sealed", 4, "B")
    assert names(checkpoints) == ["latest", "step_00000004", "step_00000004.tmp-save"]
    chosen = torchrun(WORKER, out, "resume", 0, "-")
    assert lines(chosen, "chose") == ["rank 0 chose: step_00000004", "rank 1 chose: step_00000004"]
    assert len(lines(chosen, "warned")) == 2
    assert (checkpoints / "step_00000004" / MODEL_FILE).read_bytes() == b"B" * 1000
    assert names(checkpoints) == ["latest", "step_00000004"]


def test_the_runs_own_replaced_step_left_after_the_second_rename_is_named_and_removed(tmp_path):
    """Fault: step_4.tmp-replaced, the run's own step 4 that its second save replaced, was kept by the next save as
    step_00000004.not-this-run-<time> with a warning that the run had not written it. Old code: the listing after
    the save of step 6 held 'step_00000004.not-this-run-<time>'."""
    out, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    torchrun(WORKER, out, "save", 4, "A", nproc=1)
    killed(out, "second-killed-after", 4, "B")
    assert names(checkpoints) == ["latest", "step_00000004", "step_00000004.tmp-replaced"]
    chosen = torchrun(WORKER, out, "resume", 0, "-")
    assert lines(chosen, "chose") == ["rank 0 chose: step_00000004", "rank 1 chose: step_00000004"]
    assert lines(chosen, "warned") == [
        "rank 0 warned: warning: removed step_00000004.tmp-replaced: the version of step_00000004 that the run's "
        "second save of step 4 replaced (a kill came after the new one was in place, which is verified complete)"
    ]
    torchrun(WORKER, out, "save", 6, "C", nproc=1)
    assert names(checkpoints) == ["latest", "step_00000004", "step_00000006"]
    assert (checkpoints / "step_00000004" / MODEL_FILE).read_bytes() == b"B" * 1000


def test_a_replaced_step_the_new_manifest_does_not_name_is_still_kept(tmp_path):
    """A step_N.tmp-replaced the step_N in place does not record replacing (a copy an older ngpt_ds moved there,
    or another digest): never removed at start-up; the save keeps it under a not-this-run name as before."""
    out, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    torchrun(WORKER, out, "save", 4, "A", nproc=1)
    killed(out, "second-killed-after", 4, "B")
    aside = checkpoints / "step_00000004.tmp-replaced"
    (aside / "extra.txt").write_text("x")
    manifest.write_manifest(aside, manifest.build_manifest(aside, 4))  # another COMPLETE digest
    chosen = torchrun(WORKER, out, "resume", 0, "-")
    assert lines(chosen, "warned") == []
    torchrun(WORKER, out, "save", 6, "C", nproc=1)
    assert names(checkpoints) == ["latest", "step_00000004", "step_00000004.not-this-run-<time>", "step_00000006"]


def test_a_sealed_save_that_fails_its_check_is_kept_aside_not_deleted(tmp_path):
    """A sealed step_4.tmp-save whose file no longer matches its manifest is not put in place and not deleted:
    it is kept as step_4.interrupted-save-<time>, and the run resumes step 2. Old code: the next save deleted it."""
    out, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    torchrun(WORKER, out, "save", 2, "A", nproc=1)
    killed(out, "save-killed-sealed", 4, "B")
    (checkpoints / "step_00000004.tmp-save" / MODEL_FILE).write_bytes(b"X" * 1000)
    chosen = torchrun(WORKER, out, "resume", 0, "-")
    assert lines(chosen, "chose") == ["rank 0 chose: step_00000002", "rank 1 chose: step_00000002"]
    (warned,) = lines(chosen, "warned")
    kept = re.search(r"kept as (step_00000004\.interrupted-save-\d{8}T\d{6}Z)", warned)
    assert kept and "does not match its blake2b-128 digest" in warned, warned
    torchrun(WORKER, out, "save", 6, "C", nproc=1)
    assert names(checkpoints) == [
        "latest",
        "step_00000002",
        "step_00000004.interrupted-save-<time>",
        "step_00000006",
    ]
    assert (checkpoints / kept.group(1) / MODEL_FILE).read_bytes() == b"X" * 1000


def test_a_sealed_save_older_than_a_lineage_change_is_kept_aside(tmp_path):
    """A sealed step_4.tmp-save left before the run's lineage changed (a later --resume of another checkpoint
    wrote lineage.json) is not this lineage's finished save: kept aside, not put in place."""
    import os

    out, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    torchrun(WORKER, out, "save", 2, "A", nproc=1)
    killed(out, "save-killed-sealed", 4, "B")
    sealed = os.stat(checkpoints / "step_00000004.tmp-save" / "COMPLETE").st_mtime_ns
    (out / "lineage.json").write_text("{}")
    os.utime(out / "lineage.json", ns=(sealed + 10**9, sealed + 10**9))
    chosen = torchrun(WORKER, out, "resume", 0, "-")
    assert lines(chosen, "chose") == ["rank 0 chose: step_00000002", "rank 1 chose: step_00000002"]
    (warned,) = lines(chosen, "warned")
    assert "the run's lineage changed after it was sealed (lineage.json)" in warned, warned
    assert checkpoint.complete_checkpoints(checkpoints) == [checkpoints / "step_00000002"]
