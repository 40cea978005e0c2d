"""Files written whole or not at all: `replace_file`, for every file ngpt_ds writes into a folder it does not
alone own (a run folder, a checkpoint, a dataset: meta.json, a part's part.json).

Here, not in ngpt_ds.train, so that the data tools use it without importing the trainer.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path
from typing import BinaryIO


def replace_file(target: Path, data: bytes | str | BinaryIO, mode: int | None = None) -> None:
    """Replace `target` with a file holding `data` (text as UTF-8), atomically: written as `target`.tmp, fsynced,
    renamed over `target`, so a kill mid-write leaves the old file whole (a run's config.yaml, summary.json, which
    launch/slurm/train.sbatch reads to decide whether to requeue; `latest`; COMPLETE; a dataset's meta.json),
    never one cut short. The temporary file is created new, never through a link: whatever holds its name first
    (a link planted in a run folder or a dataset someone received, a leftover of a killed write) is removed, not
    followed, and O_EXCL | O_NOFOLLOW refuse anything that takes the name again before the open. `latest.tmp`
    (and a dataset's meta.json.tmp) written through a planted link had overwritten the file it pointed to (any
    file, for a process run as root), and the link renamed into place as `latest` or meta.json.
    The temporary file is removed when the write fails (disk full). `data` may be an open binary file, copied
    from where it stands. `mode`: the file's permission bits; else those of the regular file replaced (a
    config.yaml made group-readable, or private, stays so), else the umask's. The file had been created with the
    umask's bits whatever the replaced file's were: a summary.json or COMPLETE a team had made group-readable
    became unreadable to it at the next write, and a file made private (0600) became world-readable."""
    if mode is None:
        mode = _replaced_mode(target)
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a link itself, never what it points to
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            if isinstance(data, (bytes, str)):
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            else:
                shutil.copyfileobj(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def _replaced_mode(target: Path) -> int | None:
    """The permission bits of the regular file at `target`, not followed through a link, less the setuid, setgid,
    sticky and world-write bits (a file planted in a run folder someone handed over must not make the trainer's
    new file writable by anyone); None when there is none (a link is replaced by a file of the umask's bits)."""
    try:
        found = os.lstat(target)
    except OSError:
        return None
    return stat.S_IMODE(found.st_mode) & 0o775 if stat.S_ISREG(found.st_mode) else None
