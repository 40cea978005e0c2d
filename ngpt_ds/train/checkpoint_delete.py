"""Deleting checkpoints and leftovers: retention, and the rename-first delete every removal goes through.

A delete is atomic: a checkpoint leaves its step_N name in one rename (to step_N.tmp-delete) before any
of its files is removed. A kill, or a file that cannot be removed (NFS's .nfsXXXX files of a process still
holding one, another user's files, an immutable file), leaves a folder no reader takes for a checkpoint; the
next save removes the rest, with one warning naming the file and the reason. A leftover that cannot be
removed fails a save only when it holds a name that save writes (its own step_N.tmp-save, step_N.tmp-replaced)
and cannot be renamed either.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path

from ngpt_ds import log
from ngpt_ds.train.checkpoint_layout import (
    COMPLETE,
    DELETE_SUFFIX,
    complete_checkpoints,
    step_dirs,
    step_of,
    universal_dirs,
    universal_step,
)
from ngpt_ds.train.fs_errors import describe
from ngpt_ds.train.manifest import fsync_dir

_log = log.get(__name__)


def remove(path: Path) -> None:
    """Remove a folder with its content, or a file; a link (to a folder, a file, nothing) only itself, never
    what it points to. A link planted as step_N.tmp-save had made every save fail ('Cannot call rmtree on
    a symbolic link')."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def _remove_all(folder: Path) -> list[tuple[str, BaseException]]:
    """Remove a folder with its content (not a link), going on past what cannot be removed. Returns
    (the full path, the error) for each entry left, the deepest first ([] when all is gone). shutil.rmtree's
    own error names only an entry's basename."""
    failed: list[tuple[str, BaseException]] = []

    def keep(path: str | os.PathLike[str], err: BaseException) -> None:
        if not isinstance(err, FileNotFoundError):  # gone already: what was wanted
            failed.append((str(path), err))

    if sys.version_info >= (3, 12):
        shutil.rmtree(folder, onexc=lambda _function, path, err: keep(path, err))
    else:
        shutil.rmtree(folder, onerror=lambda _function, path, info: keep(path, info[1]))
    return failed


def _what_failed(failed: list[tuple[str, BaseException]]) -> str:
    """'<the first error> (<its full path>)', and how many more entries could not be removed. The folders
    left non-empty by those (ENOTEMPTY) are not counted."""
    causes = [(p, e) for p, e in failed if not (isinstance(e, OSError) and e.errno == errno.ENOTEMPTY)] or failed
    path, err = causes[0]
    reason = os.strerror(err.errno) if isinstance(err, OSError) and err.errno else f"{type(err).__name__}: {err}"
    more = f", and {len(causes) - 1} more" if len(causes) > 1 else ""
    return f"{reason} ({path}){more}"


def _deletion_name(path: Path) -> Path:
    """<name>.tmp-delete, or <name>.<k>.tmp-delete (k = 1, 2, ...) when a delete that could not finish holds it."""
    for k in range(1000):
        doomed = path.with_name(f"{path.name}{f'.{k}' if k else ''}{DELETE_SUFFIX}")
        if not doomed.exists() and not doomed.is_symlink():
            return doomed
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(doomed))


def discard(path: Path) -> str | None:
    """Rank 0: delete a folder of checkpoints/ (a checkpoint, a leftover) or a file or link there, so that no
    reader ever sees part of it under its name: a folder is first renamed to `_deletion_name` (one atomic
    step), then removed best-effort. Returns None when `path`'s name is free, whatever of the content could not
    be removed (a warning names it: the next save tries again); else why the name is still held (nothing of
    a folder was removed then).

    shutil.rmtree(old, ignore_errors=True) had deleted in place, without a word: a delete cut short (a kill,
    an undeletable file) left step_N with its COMPLETE manifest but not all of its files, which --resume auto
    and the listings still took for a checkpoint, and retention kept what derived from it."""
    if path.is_symlink() or not path.is_dir():
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            return describe(err, path.parent)
        return None
    doomed = path
    if not path.name.endswith(DELETE_SUFFIX):
        try:
            doomed = _deletion_name(path)
            os.rename(path, doomed)
        except OSError as err:
            return f"renaming it to be deleted failed: {describe(err, path.parent)}"
        try:
            fsync_dir(path.parent)  # the new name on disk before any file goes
        except OSError as err:
            _log.warning(
                f"warning: {path} was renamed to {doomed.name} to be deleted, but the folder could not be "
                f"synced ({describe(err, path.parent)}); the next save removes it"
            )
            return None
    failed = _remove_all(doomed)
    if failed:
        _log.warning(
            f"warning: could not remove all of {doomed}"
            + (f" (was {path.name})" if doomed != path else "")
            + f": {_what_failed(failed)}. Its files take space on the filesystem until removed; the next save "
            "tries again"
        )
    return None


_LEFT_ALONE: set[Path] = set()
"""The step_N folders `retention` leaves alone and already warned about in this process (one warning each)."""


def retention(checkpoint_dir: Path, step: int, keep: int) -> None:
    """Rank 0, once step `step` is in place: delete all but the `keep` newest complete checkpoints (step_N
    folders only: the current lineage) and the step_N-universal conversions of steps older than every one kept.
    Each goes through `discard`: a delete that fails or is cut short leaves no step_N holding part of a
    checkpoint, and says why in a warning. A checkpoint that cannot even be renamed stays whole, and counts as
    kept.

    A step_N folder without a manifest is never deleted: a save of this ngpt_ds never leaves one (it writes under
    step_N.tmp-save and renames once COMPLETE is written), so it is a checkpoint being copied in by hand (`cp -a`
    and `rsync -a` keep the source's old times, so no age tells a copy in progress or stalled from a forgotten
    folder) or an interrupted save of an older ngpt_ds version. One warning per folder names it. Retention
    had deleted every such folder of a step older than the one saved: a checkpoint a user was copying in.

    Nor is a checkpoint of a step above `step` deleted or counted: the run's lineage holds none (resuming from an
    older step moves them aside, ngpt_ds.train.lineage), so it was put there from elsewhere during the run. One
    warning per folder names it. Counted among the `keep` newest, such a folder (another run's step_100 copied in
    to resume from later) had made retention delete the checkpoint just saved."""
    own = [c for c in complete_checkpoints(checkpoint_dir) if step_of(c.name) <= step]
    for old in own[:-keep]:
        discard_or_warn(old)
    kept = [c for c in complete_checkpoints(checkpoint_dir) if step_of(c.name) <= step]
    oldest_kept = step_of(kept[0].name) if kept else step
    for foreign in complete_checkpoints(checkpoint_dir):
        if step_of(foreign.name) > step and foreign not in _LEFT_ALONE:
            _LEFT_ALONE.add(foreign)
            _log.warning(
                f"warning: {foreign} is a checkpoint of a step above the one just saved ({step}): it is not of this "
                "run's lineage (put there during the run) and retention neither counts nor deletes it. Move it "
                "elsewhere, or remove it yourself"
            )
    for converted in universal_dirs(checkpoint_dir):  # derived from a step retention has now passed
        if universal_step(converted) < oldest_kept:
            discard_or_warn(converted)
    for partial in step_dirs(checkpoint_dir):
        if not (partial / COMPLETE).exists() and partial not in _LEFT_ALONE:
            _LEFT_ALONE.add(partial)
            _log.warning(
                f"warning: {partial} has no COMPLETE manifest: it is not a checkpoint of this run (a copy in progress, "
                "or an interrupted save of an older ngpt_ds) and retention leaves it alone. Remove it yourself once "
                "you know it is neither"
            )


def discard_or_warn(path: Path) -> None:
    held = discard(path)
    if held is not None:
        _log.warning(f"warning: could not delete {path}: {held}. It stays whole; the next save tries again")
