"""Deletes in a checkpoints folder that fail or are cut short: leftovers of interrupted saves, retention.

Faults (weekly review, session 17):
- One leftover of an interrupted save that could not be removed (NFS's .nfsXXXX files that a rank of the killed
  job still held, another user's files, an immutable file) failed every later save with 'cannot prepare ...'
  (exit 74, after a whole checkpoint interval of training each time), naming only the entry's basename:
  _before_save removed every step_*.tmp-save / .tmp-replaced leftover and turned any error into a failure.
- Retention deleted old checkpoints in place with shutil.rmtree(ignore_errors=True): a file that could not be
  removed, or a kill in the middle, left step_N with its COMPLETE manifest but without its weights, which
  --resume auto and the listings still took for a checkpoint (skipped with a warning whenever resume fell
  back), which kept the -universal conversions retention should have removed, and which was retried without
  a word at each save while the disk filled up.

A file is made undeletable for real: the immutable flag as root (permission bits do not stop root), else a
read-only parent folder.
"""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ngpt_ds.infer.run_checkpoint import resolve_checkpoint
from ngpt_ds.train import checkpoint, fs_errors, manifest
from ngpt_ds.train.resume import newest_intact

from conftest import require_system

WEIGHTS = "mp_rank_00_model_states.pt"
NFS_FILE = ".nfs00000000001a2b3c00000001"  # what NFS leaves of a file deleted while a process holds it


class _Engine:
    module = torch.nn.Module()  # no parameters: a first save is sized at 0 bytes; later ones by the newest step


@pytest.fixture
def pin(tmp_path):
    """pin(path) -> (errno, the paths that can no longer be removed): `path` can no longer be removed or
    renamed by this process until the test ends. As root: chattr +i on `path` alone. Else: its parent folder
    made read-only, which holds every entry there."""
    as_root = os.geteuid() == 0

    def pin(path: Path) -> tuple[int, list[Path]]:
        if as_root:
            done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
            require_system(done.returncode == 0, f"chattr +i needs a filesystem with the flag: {done.stderr.strip()}")
            return errno.EPERM, [path]
        entries = sorted(path.parent.iterdir())
        path.parent.chmod(0o555)
        return errno.EACCES, entries

    yield pin
    if as_root:  # wherever the pinned files went: tmp_path's cleanup must be able to remove them
        subprocess.run(["chattr", "-R", "-i", str(tmp_path)], capture_output=True)
    else:
        for folder, subfolders, _ in os.walk(tmp_path):
            for name in subfolders:
                os.chmod(os.path.join(folder, name), 0o755)


def _step_files(folder: Path, content: bytes = b"A") -> Path:
    folder.mkdir(parents=True)
    (folder / WEIGHTS).write_bytes(content * 1000)
    (folder / "config.yaml").write_text("model: {}\n")
    return folder


def _complete_step(checkpoints: Path, step: int, content: bytes = b"A", name: str | None = None) -> Path:
    folder = _step_files(checkpoints / (name or checkpoint.tag_for(step)), content)
    manifest.write_manifest(folder, manifest.build_manifest(folder, step))
    return folder


def _finish(checkpoints: Path, step: int, keep: int, content: bytes = b"A") -> None:
    """Rank 0's end of a save (checkpoint.save after the ranks hashed the files): manifest, rename into place,
    `latest`, retention."""
    tag = checkpoint.tag_for(step)
    tmp = _step_files(checkpoints / (tag + checkpoint.TEMP_SUFFIX), content)
    checkpoint._finish_save(checkpoints, tmp, tag, manifest.build_manifest(tmp, step), keep)


def _save(checkpoints: Path, step: int, keep: int, content: bytes = b"A") -> None:
    """Rank 0's part of a whole save: _before_save must agree, then _finish."""
    assert checkpoint._before_save(_Engine(), checkpoints, step) is None  # type: ignore[arg-type]
    _finish(checkpoints, step, keep, content)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _held(leftover: Path) -> Path:
    """A leftover folder whose held/ holds one file that cannot be removed (pinned by the caller)."""
    (leftover / "held").mkdir(parents=True)
    (leftover / WEIGHTS).write_bytes(b"x" * 10)
    (leftover / "held" / NFS_FILE).write_bytes(b"y" * 10)
    return leftover / "held" / NFS_FILE


def _not_removed(folder: Path, was: str | None, code: int, stuck: list[str]) -> set[str]:
    """The warning lines checkpoint_delete.discard may print for `folder` (named `was` before its rename) when the entries
    `stuck` (relative paths, in any order: rmtree meets them in the folder's listing order) stay."""
    renamed = f" (was {was})" if was else ""
    more = f", and {len(stuck) - 1} more" if len(stuck) > 1 else ""
    return {
        f"warning: could not remove all of {folder}{renamed}: {os.strerror(code)} ({folder / first}){more}. Its "
        "files take space on the filesystem until removed; the next save tries again"
        for first in stuck
    }


def test_an_undeletable_leftover_of_another_step_no_longer_fails_the_save(tmp_path, pin, capsys):
    checkpoints = tmp_path / "run" / "checkpoints"
    _complete_step(checkpoints, 20)
    code, stuck = pin(_held(checkpoints / "step_00000025.tmp-save"))
    _held(checkpoints / "step_00000024.tmp-save")  # an ordinary leftover next to it: removed whole
    assert checkpoint._before_save(_Engine(), checkpoints, 40) is None  # type: ignore[arg-type]
    moved = checkpoints / "step_00000025.tmp-save.tmp-delete"
    assert _names(checkpoints) == ["step_00000020", moved.name]
    assert [p.relative_to(moved).as_posix() for p in moved.rglob("*")] == ["held", f"held/{NFS_FILE}"]
    relative = [f"held/{p.name}" for p in stuck]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0] in _not_removed(moved, "step_00000025.tmp-save", code, relative), lines
    # The next save tries again, with one warning again; the leftover keeps its name
    assert checkpoint._before_save(_Engine(), checkpoints, 50) is None  # type: ignore[arg-type]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0] in _not_removed(moved, None, code, relative), lines
    assert _names(checkpoints) == ["step_00000020", moved.name]


def test_the_saved_steps_own_leftover_with_an_undeletable_file_is_moved_out_of_its_way(tmp_path, pin, capsys):
    checkpoints = tmp_path / "run" / "checkpoints"
    _complete_step(checkpoints, 20)
    own = checkpoints / "step_00000040.tmp-save"
    code, stuck = pin(_held(own))
    assert checkpoint._before_save(_Engine(), checkpoints, 40) is None  # type: ignore[arg-type]
    moved = checkpoints / "step_00000040.tmp-save.tmp-delete"
    assert _names(checkpoints) == ["step_00000020", moved.name]
    lines = capsys.readouterr().err.splitlines()
    relative = [f"held/{p.name}" for p in stuck]
    assert len(lines) == 1 and lines[0] in _not_removed(moved, own.name, code, relative), lines
    _finish(checkpoints, 40, keep=5, content=b"B")  # DeepSpeed writes into a fresh step_00000040.tmp-save
    assert manifest.verify(checkpoints / "step_00000040") is None
    assert sorted(manifest.read_manifest(checkpoints / "step_00000040")["files"]) == ["config.yaml", WEIGHTS]


def test_the_saved_steps_own_leftover_that_cannot_be_moved_fails_the_save_naming_its_full_path(tmp_path, pin):
    checkpoints = tmp_path / "run" / "checkpoints"
    _complete_step(checkpoints, 20)
    own = checkpoints / "step_00000040.tmp-save"
    _held(own)
    code, _ = pin(own)
    problem = checkpoint._before_save(_Engine(), checkpoints, 40)  # type: ignore[arg-type]
    assert problem == (
        f"cannot prepare {checkpoints} for the checkpoint of step 40: {own}, left by an interrupted save of this "
        f"step, holds a name this save writes and could not be removed: renaming it to be deleted failed: "
        f"{os.strerror(code)} ({own}). Remove it, then rerun"
    )
    assert _names(checkpoints) == ["step_00000020", own.name]


def test_a_free_space_refusal_names_the_leftovers_that_could_not_be_removed(tmp_path, pin, monkeypatch):
    checkpoints = tmp_path / "run" / "checkpoints"
    _complete_step(checkpoints, 20)
    pin(_held(checkpoints / "step_00000025.tmp-save"))
    size = checkpoint.checkpoint_bytes(checkpoints / "step_00000020")
    real = checkpoint.shutil.disk_usage
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: real(p)._replace(free=100))
    problem = checkpoint._before_save(_Engine(), checkpoints, 40)  # type: ignore[arg-type]
    assert problem == (
        f"not enough free space for the checkpoint of step 40: it needs about {fs_errors.gib(size)} (the size of "
        f"step_00000020), 0.0 MiB are free on the filesystem of {checkpoints}; step_00000025.tmp-save.tmp-delete "
        "could not be removed (see the warnings). Nothing was written"
    )


def test_retention_of_a_checkpoint_with_an_undeletable_file_leaves_no_step_name_holding_part_of_it(
    tmp_path, pin, capsys
):
    checkpoints = tmp_path / "run" / "checkpoints"
    _save(checkpoints, 10, keep=2)
    _save(checkpoints, 20, keep=2)
    converted = _step_files(checkpoints / "step_00000010-universal.tmp-save", b"U")
    checkpoint.finish_universal(converted, checkpoints / "step_00000010-universal", checkpoints / "step_00000010")
    code, stuck = pin(checkpoints / "step_00000010" / manifest.COMPLETE)
    capsys.readouterr()
    _save(checkpoints, 30, keep=2)
    deleted = checkpoints / "step_00000010.tmp-delete"
    # step_00000010-universal goes too: step 10 is no longer kept
    assert _names(checkpoints) == ["latest", deleted.name, "step_00000020", "step_00000030"]
    assert [p.name for p in checkpoint.complete_checkpoints(checkpoints)] == ["step_00000020", "step_00000030"]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0] in _not_removed(deleted, "step_00000010", code, [p.name for p in stuck])
    _save(checkpoints, 40, keep=2)  # the next save tries again, with one warning
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0] in _not_removed(deleted, None, code, [p.name for p in stuck]), lines
    assert _names(checkpoints) == ["latest", deleted.name, "step_00000030", "step_00000040"]
    warned: list[str] = []
    assert newest_intact(checkpoints, warn=warned.append) == checkpoints / "step_00000040" and warned == []
    assert checkpoint.step_dirs(checkpoints) == [checkpoints / "step_00000030", checkpoints / "step_00000040"]


def test_a_kill_in_the_middle_of_retention_leaves_no_half_deleted_checkpoint_under_its_step_name(tmp_path, monkeypatch):
    """The kill comes at the first file retention removes; what resume would list at that moment is recorded."""
    checkpoints = tmp_path / "run" / "checkpoints"
    _save(checkpoints, 10, keep=2)
    _save(checkpoints, 20, keep=2)

    class Killed(BaseException):
        pass

    listed: list[list[str]] = []
    unlink = os.unlink

    def killed_at_the_first_file(path, *args, **kwargs):
        if os.path.basename(path) not in (WEIGHTS, "config.yaml", manifest.COMPLETE):
            return unlink(path, *args, **kwargs)
        listed.append([p.name for p in checkpoint.complete_checkpoints(checkpoints)])
        raise Killed

    monkeypatch.setattr(os, "unlink", killed_at_the_first_file)
    with pytest.raises(Killed):
        _save(checkpoints, 30, keep=2)
    monkeypatch.undo()
    assert listed == [["step_00000020", "step_00000030"]]  # the old code still listed step_00000010
    assert _names(checkpoints) == ["latest", "step_00000010.tmp-delete", "step_00000020", "step_00000030"]
    _save(checkpoints, 40, keep=3)  # the requeued job's first save removes what the kill left
    assert _names(checkpoints) == ["latest", "step_00000020", "step_00000030", "step_00000040"]


def test_a_replaced_step_that_cannot_be_fully_removed_is_never_put_back(tmp_path, pin, capsys):
    """A second save of step 20 moves the old step_00000020 aside as step_00000020.tmp-replaced; if that
    cannot be removed whole and keeps its COMPLETE, a later save (once retention deleted the new step_00000020)
    would put it back as step_00000020 (restore_moved_aside), half of a checkpoint."""
    checkpoints = tmp_path / "run" / "checkpoints"
    _save(checkpoints, 10, keep=2)
    _save(checkpoints, 20, keep=2)
    code, stuck = pin(checkpoints / "step_00000020" / manifest.COMPLETE)
    _save(checkpoints, 20, keep=2, content=b"B")
    _save(checkpoints, 30, keep=2)
    _save(checkpoints, 40, keep=2)
    capsys.readouterr()
    assert checkpoint._before_save(_Engine(), checkpoints, 50) is None  # type: ignore[arg-type]
    deleted = checkpoints / "step_00000020.tmp-replaced.tmp-delete"
    assert _names(checkpoints) == ["latest", deleted.name, "step_00000030", "step_00000040"]
    assert [p.name for p in checkpoint.complete_checkpoints(checkpoints)] == ["step_00000030", "step_00000040"]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0] in _not_removed(deleted, None, code, [p.name for p in stuck]), lines


def test_no_reader_takes_a_folder_being_deleted_for_a_checkpoint(tmp_path):
    """A kill right after retention's rename leaves a whole checkpoint, manifest and all, as step_N.tmp-delete:
    resume, inference's listing, the -universal listing and lineage's step listing pass it by."""
    checkpoints = tmp_path / "run" / "checkpoints"
    _complete_step(checkpoints, 10, name="step_00000030.tmp-delete")
    _complete_step(checkpoints, 10, name="step_00000030-universal.tmp-delete")
    _complete_step(checkpoints, 20)
    assert checkpoint.complete_checkpoints(checkpoints) == [checkpoints / "step_00000020"]
    assert checkpoint.step_dirs(checkpoints) == [checkpoints / "step_00000020"]
    assert checkpoint.universal_dirs(checkpoints) == [] and checkpoint.moved_aside(checkpoints) == []
    assert newest_intact(checkpoints) == checkpoints / "step_00000020"
    assert resolve_checkpoint(tmp_path / "run") == checkpoints / "step_00000020"
    with pytest.raises(Exception) as refused:
        resolve_checkpoint(checkpoints / "step_00000030.tmp-delete")
    assert "step_00000030.tmp-delete" in str(refused.value)
    assert checkpoint._before_save(_Engine(), checkpoints, 40) is None  # type: ignore[arg-type]
    assert _names(checkpoints) == ["step_00000020"]


if __name__ == "__main__":
    sys.exit("run with pytest")
