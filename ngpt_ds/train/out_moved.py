"""Telling a save that its --out was moved (mv) or deleted while the run trained, and where it went.

A save writes by path. After `mv <out> elsewhere` in the middle of a save, DeepSpeed's save_checkpoint (its
makedirs) created <out>/checkpoints/step_N.tmp-save again at the old place and wrote the rest of the checkpoint there,
which the manifest then sealed as step_N, complete, without the files written before the move (the model states
went with the folder): a checkpoint that cannot be loaded, named intact. A move a moment later stopped the run with
'checkpoint of step N not saved: finishing ...: No such file or directory', naming neither the move nor the fix.

Rank 0 holds --out open from its first save (`hold`); `gone` compares the folder the path names with it, and Linux's
/proc/self/fd says where the folder went."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ngpt_ds.train.checkpoint_layout import CHECKPOINTS, RECOVERY_SCRIPTS, complete_checkpoints

_held: dict[str, int] = {}
"""--out (absolute) -> a descriptor open on the folder it named at the process's first save there."""


def hold(out_dir: Path) -> None:
    """Rank 0, at each save's start: open `out_dir` once (the run's folder, wherever it is moved later)."""
    key = str(out_dir.absolute())
    if key not in _held:
        with contextlib.suppress(OSError):  # not there: `gone` says so
            _held[key] = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)


def _where(fd: int) -> Path | None:
    """Where the folder open as `fd` is now; None once deleted, or where /proc cannot tell."""
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return None if path.endswith(" (deleted)") or not os.path.isabs(path) else Path(path)


def gone(out_dir: Path) -> str | None:
    """None while `out_dir` names the folder `hold` opened, or where none was held (a save creates a missing --out, as
    one with no trainer around it does); else one line naming the move, where the folder went (when known), the newest
    complete checkpoint there and the fix."""
    fd = _held.get(str(out_dir.absolute()))
    if fd is None:
        return None
    try:
        named: os.stat_result | None = os.stat(out_dir)
    except OSError:
        named = None
    mine = os.fstat(fd)
    if named is not None and (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino):
        return None
    return _line(out_dir, _where(fd))


def new_place(out_dir: Path) -> Path | None:
    """Where the folder `hold` opened for `out_dir` is now, when `out_dir` no longer names it and it was moved (not
    deleted); else None (not moved, deleted, never held, or where /proc cannot tell)."""
    fd = _held.get(str(out_dir.absolute()))
    if fd is None:
        return None
    with contextlib.suppress(OSError):
        named, mine = os.stat(out_dir), os.fstat(fd)
        if (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino):
            return None
    return _where(fd)


def _line(out_dir: Path, new: Path | None) -> str:
    if new is None:
        return (
            f"{out_dir} is gone (moved or deleted while the run trained), with the checkpoints the run had saved: "
            "run the same command with --out at the folder's new place to continue from its newest complete one "
            "(a step_N.tmp-save there is this unfinished save: the next save removes it)"
        )
    try:
        newest = [c.name for c in complete_checkpoints(new / CHECKPOINTS)][-1:]
    except OSError:
        newest = []
    intact = f"the newest complete there is {newest[0]}" if newest else "no complete checkpoint is there"
    return (
        f"{out_dir} was moved to {new} while the run trained; its checkpoints went with it ({intact}; a "
        f"step_N.tmp-save there is this unfinished save: the next save removes it). Run the same command with "
        f"--out {new} to continue from its newest"
    )


def remove_recreated(out_dir: Path, tmp: Path) -> None:
    """After `gone`: what the save wrote at the old place, which DeepSpeed's makedirs created again (the unfinished
    save `tmp`, DeepSpeed's recovery scripts), and the folders, where nothing else is in them."""
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    checkpoint_dir = out_dir / CHECKPOINTS
    for script in RECOVERY_SCRIPTS:
        with contextlib.suppress(OSError):
            (checkpoint_dir / script).unlink()
    for folder in (checkpoint_dir, out_dir):  # rmdir: only an empty folder, never one with anything else in it
        with contextlib.suppress(OSError):
            folder.rmdir()
