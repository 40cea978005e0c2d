"""Fault (left29): a sealed step_N.tmp-save was judged "the run's finished save" by comparing file times: an
abandoned-* folder, lineage.json or step folder written after the seal had to have a later mtime. The wall clock
can step back (NTP, a VM resumed): then a later lineage change looked older than the seal, and a save of an
abandoned lineage was put in place as the run's step N; or a lineage.json written before the seal looked newer,
and the run's finished save was kept aside.

The save's manifest now records what checkpoints/ held when it was sealed (checkpoint_interrupted.seal_record,
written by checkpoint._finish_save); anything absent from the record was written after, whatever its time. A
save sealed by an older ngpt_ds (no record) is judged by file times as before.

The run is made by real saves (tests/workers/save26_kill_worker.py, killed after the seal); the clock step is
imitated with os.utime. Old code: 'put step_00000004 in place' where it had to keep it aside, and 'kept as
step_00000004.interrupted-save-...' for the finished save.
"""

import json
import os
import shutil

import pytest

from ngpt_ds.train import checkpoint, manifest
from ngpt_ds.train.checkpoint_interrupted import SEALED_AMONG, recover_interrupted_saves

from conftest import REPO, torchrun

WORKER = REPO / "tests" / "workers" / "save26_kill_worker.py"
TMP = "step_00000004.tmp-save"
SECOND = 10**9


@pytest.fixture(scope="module")
def sealed_run(tmp_path_factory):
    """step_2 saved; lineage.json in place (the run grew from a checkpoint); step_4 sealed, killed before its
    rename. Each test works on a copy."""
    out = tmp_path_factory.mktemp("run") / "run"
    torchrun(WORKER, out, "save", 2, "A", nproc=1)
    (out / "lineage.json").write_text('{"resumed_from": "/x/step_00000001", "step": 1, "complete_blake2b": null}\n')
    proc = torchrun(WORKER, out, "save-killed-sealed", 4, "B", nproc=1, check=False)
    assert proc.returncode != 0 and (out / "checkpoints" / TMP / "COMPLETE").is_file()
    return out


@pytest.fixture
def run(sealed_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(sealed_run, out, symlinks=True)
    return out


def sealed_ns(out):
    return os.stat(out / "checkpoints" / TMP / "COMPLETE").st_mtime_ns


def at(path, ns):
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def recover(out):
    (line,) = recover_interrupted_saves(out / "checkpoints")
    return line


def abandoned_after_the_seal(out):
    """A resume from step 2 by a process that did not mend the folder first: step_3 (trained since) moved into
    abandoned-*, written after the seal, with the clock stepped back past it."""
    checkpoints = out / "checkpoints"
    step3 = checkpoints / "step_00000003"
    shutil.copytree(checkpoints / "step_00000002", step3)
    manifest.write_manifest(step3, manifest.build_manifest(step3, 3))
    abandoned = checkpoints / f"{checkpoint.ABANDONED_PREFIX}20260101T000000Z"
    abandoned.mkdir()
    os.rename(step3, abandoned / step3.name)
    at(abandoned, sealed_ns(out) - 60 * SECOND)
    return abandoned.name


def lineage_after_the_seal(out):
    (out / "lineage.json").write_text('{"resumed_from": "/y/step_00000002", "step": 2, "complete_blake2b": null}\n')
    at(out / "lineage.json", sealed_ns(out) - 60 * SECOND)
    return "lineage.json"


def step_sealed_after(out):
    step3 = out / "checkpoints" / "step_00000003"
    shutil.copytree(out / "checkpoints" / "step_00000002", step3)
    manifest.write_manifest(step3, manifest.build_manifest(step3, 3))
    at(step3 / "COMPLETE", sealed_ns(out) - 60 * SECOND)
    return None


@pytest.mark.parametrize("change", [abandoned_after_the_seal, lineage_after_the_seal, step_sealed_after])
def test_a_change_after_the_seal_keeps_the_save_aside_though_the_clock_stepped_back(run, change):
    """Old code: 'put step_00000004 in place from step_00000004.tmp-save' (the file time looked older)."""
    named = change(run)
    line = recover(run)
    if named is None:
        assert "(step_00000003 was sealed after it)" in line, line
    else:
        assert f"(the run's lineage changed after it was sealed ({named}))" in line, line
    assert "kept as step_00000004.interrupted-save-" in line, line
    assert not (run / "checkpoints" / "step_00000004").exists()
    newest = checkpoint.complete_checkpoints(run / "checkpoints")[-1].name
    assert newest == ("step_00000003" if named is None else "step_00000002")


def test_a_lineage_json_written_before_the_seal_with_a_later_time_does_not_keep_the_save_aside(run):
    """The clock stepped back between the run's start (lineage.json) and its save: the finished save is the run's.
    Old code: 'kept as step_00000004.interrupted-save-...' (the run's lineage changed after it was sealed)."""
    at(run / "lineage.json", sealed_ns(run) + 60 * SECOND)
    line = recover(run)
    assert line.startswith("put step_00000004 in place from step_00000004.tmp-save"), line
    assert manifest.verify(run / "checkpoints" / "step_00000004") is None


def test_the_seal_records_what_the_folder_held(run):
    record = json.loads((run / "checkpoints" / TMP / "COMPLETE").read_text())[SEALED_AMONG]
    step2 = run / "checkpoints" / "step_00000002" / "COMPLETE"
    import hashlib

    digest = lambda p: hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()  # noqa: E731
    assert record == {
        "steps": {"step_00000002": digest(step2)},
        "abandoned": [],
        "lineage_blake2b": digest(run / "lineage.json"),
    }


def strip_record(out):
    """The save as an ngpt_ds before the record wrote it: the same files, a manifest without the entry."""
    tmp = out / "checkpoints" / TMP
    saved = manifest.read_manifest(tmp)
    del saved[SEALED_AMONG]
    manifest.write_manifest(tmp, saved)


def test_an_old_sealed_save_without_the_record_is_put_in_place_as_before(run):
    strip_record(run)
    line = recover(run)
    assert line.startswith("put step_00000004 in place from step_00000004.tmp-save"), line
    assert manifest.verify(run / "checkpoints" / "step_00000004") is None


def test_an_old_sealed_save_is_judged_by_file_times_as_before(run):
    """Without the record only the file times can tell: a change with a later time keeps it aside."""
    strip_record(run)
    (run / "lineage.json").write_text("{}")
    at(run / "lineage.json", sealed_ns(run) + SECOND)
    assert "the run's lineage changed after it was sealed (lineage.json)" in recover(run)


def test_a_malformed_record_keeps_the_save_aside(run):
    tmp = run / "checkpoints" / TMP
    saved = manifest.read_manifest(tmp)
    saved[SEALED_AMONG] = {"steps": [], "abandoned": [], "lineage_blake2b": None}
    manifest.write_manifest(tmp, saved)
    line = recover(run)
    assert f"its manifest's {SEALED_AMONG} record is malformed" in line and "kept as" in line, line
