"""The heartbeat of a staging folder (ngpt_ds.data.staging): a file the process writing the folder rewrites every
BEAT_S seconds, which a preparation on another host reads twice, WATCH_S apart, before it removes the folder.

Where flock stays on one node (Lustre `localflock`, NFS `local_lock=flock`) another host's staging folder looks
abandoned from here, and staging judged it by the age of its files on this host's clock: unchanged for a day, it
was removed. A host whose clock ran a day or more ahead of the writer's (a node whose NTP failed, a VM's clock
set by hand) saw a live folder a day old and deleted it under the preparation writing it. Two reads of the beat
file compare its content and times with each other, never with this host's clock: a change between them is a
live writer, whatever either clock says.

The beat is a counter written in place and synced (so a network filesystem's other clients see it at their next
open), or, where that write fails (a full disk), the file's times set to now, which needs no space. A folder made
by an older ngpt_ds has no beat file: only its files' age judges it, as before.

The beat also names the writer's boot id (the kernel's, which every container on one node shares): a lock file's
host name alone does not tell this machine from another of the same name (containers started with one
`--hostname` on several nodes, images that all call themselves `localhost`), and a free lock of another machine
proves nothing under localflock. A folder whose beat names another boot is watched like another host's; one that
names none (an older ngpt_ds's) is trusted to its lock as before.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from pathlib import Path

BEAT_FILE = ".owner.beat"
BEAT_S = 10.0
"""How often the writer of a staging folder rewrites its beat file."""
WATCH_S = 60.0
"""How long a preparation on another host watches a beat file for a change before it judges the folder
abandoned: six beats, so a writer whose beats run late (a loaded node, a slow network filesystem) is still seen."""


def _read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            boot = f.read(64).decode("ascii", "replace").strip()
    except OSError:  # not Linux: no boot id, and none is compared
        return ""
    return boot if boot and all(c in "0123456789abcdef-" for c in boot) else ""


BOOT_ID = _read_boot_id()
"""This machine's boot id, or '' where the OS has none."""

_guard = threading.Lock()
_beating: dict[int, int] = {}  # descriptor of a beat file -> its count; closed only under _guard, never mid-write
_thread: threading.Thread | None = None


def start(folder: Path) -> int | None:
    """Create `folder`'s beat file and beat it every BEAT_S seconds until `stop`; its descriptor, or None where it
    cannot be created (a full disk: the folder is then judged as an older ngpt_ds's is)."""
    global _thread
    try:
        fd = os.open(folder / BEAT_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError:
        return None
    _beat(fd, 0)
    with _guard:
        _beating[fd] = 0
        if _thread is None:
            _thread = threading.Thread(target=_beat_forever, name="ngpt_ds staging beat", daemon=True)
            _thread.start()
    return fd


def stop(fd: int | None) -> None:
    """Stop beating `fd` and close it (the caller deletes or renames the file)."""
    if fd is None:
        return
    with _guard:
        if _beating.pop(fd, None) is not None:
            os.close(fd)


def _beat_forever() -> None:
    global _thread
    while True:
        time.sleep(BEAT_S)
        with _guard:
            if not _beating:
                _thread = None
                return
            for fd in _beating:
                _beating[fd] += 1
                _beat(fd, _beating[fd])


def _beat(fd: int, count: int) -> None:
    try:
        os.pwrite(fd, f"beat {count:012d} boot {BOOT_ID}\n".encode(), 0)  # one length: never a file cut short
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.utime(fd)


def read(folder: Path) -> tuple[bytes, int, int] | None:
    """What `folder`'s beat file holds now (its content, mtime, ctime), read from a fresh open, which a network
    filesystem revalidates; None when there is none (an older ngpt_ds's folder) or it cannot be read. Anything
    but a regular file there (a named pipe, a device, a link) is never opened, and counts as none."""
    try:
        if not stat.S_ISREG(os.lstat(folder / BEAT_FILE).st_mode):
            return None
        fd = os.open(folder / BEAT_FILE, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        return os.read(fd, 64), st.st_mtime_ns, st.st_ctime_ns
    except OSError:
        return None
    finally:
        os.close(fd)


def boot_of(seen: tuple[bytes, int, int] | None) -> str:
    """The boot id a beat file's content (from `read`) names, or '' where it names none (an older ngpt_ds's beat,
    no beat file, a writer on an OS without boot ids)."""
    if seen is None:
        return ""
    words = seen[0].decode("ascii", "replace").split()
    if len(words) != 4 or words[0] != "beat" or words[2] != "boot":
        return ""
    return words[3] if all(c in "0123456789abcdef-" for c in words[3]) else ""  # shown in a warning: no escapes


def other_boot(folder: Path) -> str:
    """The boot id `folder`'s beat file names when it is not this machine's, else '' (this boot, or none named:
    an older ngpt_ds's folder, judged by its lock as before). Its lock, free here, proves nothing then."""
    boot = boot_of(read(folder))
    return boot if boot and BOOT_ID and boot != BOOT_ID else ""


def still_beating(folders: list[Path]) -> set[Path]:
    """Of `folders` (each with a beat file), those whose beat file changed within WATCH_S: one wait for all."""
    before = {folder: read(folder) for folder in folders}
    if not before:
        return set()
    time.sleep(WATCH_S)
    return {folder for folder, seen in before.items() if read(folder) != seen}
