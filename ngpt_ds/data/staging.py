"""Hidden staging folders beside a dataset (or part) being written, renamed into place when complete.

Each staging folder holds a lock file (`.owner`) locked by the process writing it for as long as it
lives. A preparation killed mid-write (SIGKILL, the node lost, the job's time limit) left its staging
folder behind, hidden, with every shard it had written, and each rerun left another: a 500 GB corpus
killed twice held 1 TB of disk no one could see. A folder whose lock nobody holds is abandoned; the next
preparation of the same folder removes it. One still locked belongs to a preparation under way (two may
write one folder; the second stops at publishing) and is left alone.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from pathlib import Path

from ngpt_ds import log

_log = log.get(__name__)

OWNER_FILE = ".owner"
_held: dict[Path, int] = {}  # staging folder -> descriptor of its locked OWNER_FILE


def _name(final: Path) -> str:
    return f".{final.name}.partial-"


def _lock(path: Path, create: bool) -> int | None:
    """A descriptor holding an exclusive lock on `path`, or None where another process holds it."""
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def remove_abandoned(final: Path) -> list[Path]:
    """Remove the staging folders of `final` left by preparations that are gone; return them."""
    removed = []
    for folder in sorted(final.parent.glob(_name(final) + "*")):
        owner = folder / OWNER_FILE
        if folder in _held or not folder.is_dir() or folder.is_symlink() or not owner.is_file():
            continue  # ours, not a staging folder, or one of an ngpt_ds that kept no lock: not ours to judge
        try:
            fd = _lock(owner, create=False)
        except OSError:  # gone meanwhile (published or removed), or a filesystem without locks
            continue
        if fd is None:
            continue  # a preparation under way
        try:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)
        _log.warning(f"removed {folder}: left by an interrupted preparation of {final}")
        removed.append(folder)
    return removed


def staging_dir(final: Path) -> Path:
    """A new empty hidden folder beside `final` (`.<name>.partial-<id>`), locked by this process, to be
    renamed into it by `swap_in`. Abandoned ones of `final` are removed first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(final)
    staging = final.parent / f"{_name(final)}{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        # Locked before it has its name: a folder whose OWNER_FILE is unlocked is always abandoned.
        fd = _lock(staging / (OWNER_FILE + ".new"), create=True)
        if fd is not None:
            os.rename(staging / (OWNER_FILE + ".new"), staging / OWNER_FILE)
            _held[staging] = fd
    except OSError:  # a filesystem without flock: the folder is only never judged abandoned
        pass
    return staging


def _release(staging: Path) -> None:
    fd = _held.pop(staging, None)
    if fd is not None:
        (staging / OWNER_FILE).unlink(missing_ok=True)  # not part of the dataset
        os.close(fd)


def remove_staging(staging: Path) -> None:
    """Remove a staging folder that was not published (an error, or Ctrl-C)."""
    fd = _held.pop(staging, None)
    if staging.exists():
        shutil.rmtree(staging, ignore_errors=True)
    if fd is not None:
        os.close(fd)


def swap_in(staging: Path, final: Path) -> None:
    """Rename the complete `staging` to `final`; an existing `final` is renamed aside first and
    deleted after, so `final` is always either the old folder or the new one."""
    _release(staging)
    if not final.exists():
        os.replace(staging, final)
        return
    old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)
