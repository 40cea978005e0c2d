"""Two leftovers of checkpoint_interrupted's seal record (the manifest's `sealed_among`: each step folder's COMPLETE
digest when a save was sealed, read by the next start-up to tell a finished save from one the lineage moved past).

Fault (left30): a step folder whose COMPLETE became unreadable after an interrupted save was sealed (a checkpoint
kept as links whose storage is not mounted, a storage fault) was reported as "step_N was sealed after it". The save
is still kept aside, the safe outcome, but the words said something nothing showed. They now say what was seen and
what to do. Old code: '(step_00000002 was sealed after it)'.

Cost (left30): a keep-all run read every step folder's COMPLETE at each save for the record, 120 ms of CPU with 2000
checkpoints on the 2-core test machine (12 ms now). A COMPLETE whose stat key (device, inode, size, mtime, ctime) is unchanged
since this process read it is not read again. Old code: the second record read all 50 again (50 reads, not 0).

The checkpoints are made by hand (manifest.build_manifest), as checkpoint._finish_save seals them: a sealed
step_4.tmp-save is what a kill between the seal and its rename leaves.
"""

import hashlib
import os

import pytest

from ngpt_ds.train import checkpoint_interrupted as ci
from ngpt_ds.train import manifest


def step_folder(folder, step, payload=b"weights"):
    folder.mkdir()
    (folder / "model.pt").write_bytes(payload * 100)
    manifest.write_manifest(folder, manifest.build_manifest(folder, step))
    return folder


def sealed_save(checkpoints, step):
    """step_N.tmp-save sealed with its record, as a kill after the seal and before the rename leaves it."""
    tmp = step_folder(checkpoints / f"step_{step:08d}.tmp-save", step, b"newer")
    final = checkpoints / f"step_{step:08d}"
    saved = manifest.read_manifest(tmp)
    manifest.write_manifest(tmp, {**saved, **ci.seal_record(checkpoints, final, own=False)})
    return tmp


def test_a_complete_unreadable_since_the_seal_is_named_as_such(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    step2 = step_folder(checkpoints / "step_00000002", 2)
    sealed_save(checkpoints, 4)
    # step_2's COMPLETE now unreadable: kept as a link to storage that is not mounted.
    (step2 / "COMPLETE").unlink()
    (step2 / "COMPLETE").symlink_to(tmp_path / "unmounted" / "COMPLETE")
    (line,) = ci.recover_interrupted_saves(checkpoints)
    assert "was sealed after it" not in line, line  # old code: '(step_00000002 was sealed after it)'
    kept = next(p.name for p in checkpoints.iterdir() if ci.KEPT_INFIX in p.name)
    assert line == (
        "step_00000004.tmp-save, a save sealed complete but interrupted before its rename, was not put in place "
        "(step_00000002/COMPLETE cannot be read now (No such file or directory), so whether step_00000002 changed "
        "after this save was sealed is unknown. Check that file's permissions and its storage: --resume reads it "
        "too. To use this save, move it out of checkpoints/ as step_00000004 and pass --resume with that path): "
        f"kept as {kept}, not deleted. Move it elsewhere or remove it yourself"
    ), line
    assert manifest.verify(checkpoints / kept) is None  # kept whole
    assert not (checkpoints / "step_00000004").exists()


def test_a_complete_unreadable_at_the_seal_is_named_as_such(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    step2 = step_folder(checkpoints / "step_00000002", 2)
    (step2 / "COMPLETE").rename(tmp_path / "COMPLETE.away")
    (step2 / "COMPLETE").symlink_to(tmp_path / "COMPLETE.away2")  # unreadable at the seal
    sealed_save(checkpoints, 4)
    (step2 / "COMPLETE").unlink()
    (tmp_path / "COMPLETE.away").rename(step2 / "COMPLETE")  # readable again at the restart
    (line,) = ci.recover_interrupted_saves(checkpoints)
    assert "(step_00000002/COMPLETE could not be read when it was sealed, so whether step_00000002 changed" in line
    assert "kept as step_00000004.interrupted-save-" in line, line


def test_a_readable_unchanged_folder_still_lets_the_save_in_place(tmp_path):
    """Not a fault: guards the cached record against keeping the run's finished save aside."""
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    step_folder(checkpoints / "step_00000002", 2)
    ci.seal_record(checkpoints, checkpoints / "step_00000003", own=False)  # an earlier save: fills the memory
    sealed_save(checkpoints, 4)
    (line,) = ci.recover_interrupted_saves(checkpoints)
    assert line.startswith("put step_00000004 in place from step_00000004.tmp-save"), line


@pytest.fixture
def counted_reads(monkeypatch):
    reads = []
    real = ci._file_digest

    def counting(path, cap):
        reads.append(path.parent.name)
        return real(path, cap)

    monkeypatch.setattr(ci, "_file_digest", counting)
    monkeypatch.setattr(ci, "_SETTLED_NS", 0, raising=False)  # the files were written just now; a run's are seconds old
    return reads


def digest(path):
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def test_a_second_seal_record_reads_only_the_complete_that_changed(tmp_path, counted_reads):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    folders = [step_folder(checkpoints / f"step_{s:08d}", s) for s in range(1, 51)]
    final = checkpoints / "step_00000051"
    first = ci.seal_record(checkpoints, final, own=False)[ci.SEALED_AMONG]
    assert len([r for r in counted_reads if r.startswith("step_")]) == 50
    counted_reads.clear()
    second = ci.seal_record(checkpoints, final, own=False)[ci.SEALED_AMONG]
    assert [r for r in counted_reads if r.startswith("step_")] == []  # old code: all 50 read again
    assert second == first
    # A COMPLETE rewritten in place with the same size and its mtime put back: its ctime moved, so it is read.
    target = folders[6] / "COMPLETE"
    before = os.stat(target)
    text = target.read_bytes()
    target.write_bytes(text.replace(b"model.pt", b"model.pT"))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(target).st_size == before.st_size
    third = ci.seal_record(checkpoints, final, own=False)[ci.SEALED_AMONG]
    assert [r for r in counted_reads if r.startswith("step_")] == ["step_00000007"]
    assert third["steps"]["step_00000007"] == digest(target) != first["steps"]["step_00000007"]
    assert {k: v for k, v in third["steps"].items() if k != "step_00000007"} == {
        k: v for k, v in first["steps"].items() if k != "step_00000007"
    }
    # A folder removed (retention) leaves the record and the memory.
    os.rename(folders[0], checkpoints / "gone")
    fourth = ci.seal_record(checkpoints, final, own=False)[ci.SEALED_AMONG]
    assert "step_00000001" not in fourth["steps"] and len(fourth["steps"]) == 49
    assert set(ci._DIGESTS[str(checkpoints)]) == set(fourth["steps"])
