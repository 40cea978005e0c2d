"""Checkpoint folders this process has just verified, so that the next verification of the very same folder
(renamed since, as a sealed save put in place is) does not read its files again.

At start-up the ranks verify a sealed step_N.tmp-save together before rank 0 renames it to step_N
(ngpt_ds.train.checkpoint_interrupted), and the resume then verified step_N: every byte of the checkpoint hashed
twice before training. A passed verification is remembered here by the folder's fingerprint: the folder's
device and inode, its COMPLETE manifest's digest, every file's relative path, device, inode, size, mtime and
ctime (a write moves the ctime, which no user can set back), and every folder's path, inode and kind: a link to a
folder put in after the verification, which `verify` refuses and os.walk does not enter, had gone unseen. The
memory is this process's alone and each entry is used once (`take`): a verification made by another process, or by
an earlier run, is never trusted.
"""

from __future__ import annotations

import os
from pathlib import Path

from ngpt_ds.train.manifest import marker_digest

Fingerprint = tuple[object, ...]

_passed: set[Fingerprint] = set()


def fingerprint(folder: Path) -> Fingerprint | None:
    """What identifies `folder` and its files as they are now; None when it cannot be read or has no manifest
    digest (nothing is remembered then)."""
    digest = marker_digest(folder)
    if digest is None:
        return None
    try:
        top = os.stat(folder)
        files = []
        for root, dirs, names in os.walk(folder):
            dirs.sort()
            for name in dirs:  # a folder, or a link to one (os.walk lists it here and does not enter it)
                info = os.lstat(os.path.join(root, name))
                rel = os.path.relpath(os.path.join(root, name), folder)
                files.append((rel, info.st_dev, info.st_ino, info.st_mode, 0, info.st_ctime_ns))
            for name in sorted(names):
                info = os.stat(os.path.join(root, name))  # links followed, as verify reads them
                rel = os.path.relpath(os.path.join(root, name), folder)
                files.append((rel, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns))
    except OSError:
        return None
    return (top.st_dev, top.st_ino, digest, tuple(files))


def remember(passed: Fingerprint) -> None:
    """Record that the folder of fingerprint `passed` passed a verification, and had that fingerprint both before
    and after its files were read (the caller checks: nothing changed meanwhile)."""
    _passed.add(passed)


def take(folder: Path) -> bool:
    """Whether this process verified `folder`, as it is now, and has not used that verification yet (used now)."""
    now = fingerprint(folder)
    if now is None or now not in _passed:
        return False
    _passed.discard(now)
    return True


def forget() -> None:
    """Drop every remembered verification."""
    _passed.clear()
