"""Reading a dataset's small JSON records (meta.json, a part's part.json) no further than a size no real one reaches.

Both hold one line per shard and a sha256 per hashed block: a few MB even at hundreds of GB of tokens. A larger
file (damaged, crafted, or a link to something else) was read and parsed whole, held several times over, before
it was refused for a missing field; a named pipe there had the read wait for a writer for good.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from ngpt_ds.errors import UNPARSABLE, NgptConfigError

MAX_JSON_BYTES = 64 << 20
"""The largest meta.json or part.json read. A 100 MB meta.json held 521 MB for 2.3 s on every rank while it was
parsed; a 256 MiB part.json 512 MiB (as bytes and as text)."""


def read_capped_json(path: Path, what: str, fix: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in `path`, read no further than `max_bytes` (+1 to tell a larger file). NgptConfigError naming
    the file and ending in `fix` where it cannot be read, is larger (`what`: the kind of file, "a dataset's
    meta.json"), or is not UTF-8 JSON. The caller checks the value's shape."""
    try:
        # Neither a folder nor a device is opened: opening a device can act (a watchdog arms, a tape rewinds).
        if not (stat.S_ISREG(mode := os.stat(path).st_mode) or stat.S_ISFIFO(mode)):
            raise NgptConfigError(f"{path} is {_kind(mode)}, not a regular file ({what} is one); {fix}")
        # O_NONBLOCK: a named pipe at the name (a part folder handed over, a crafted dataset) opens without waiting
        # for a writer, and is refused below (as is a file swapped in after the stat); a plain open waited for one.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        _refuse_irregular(fd, path, what, fix)
        with os.fdopen(fd, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as e:
        raise NgptConfigError(f"{path}: unreadable ({type(e).__name__}: {e}); {fix}") from None
    if len(raw) > max_bytes:
        raise NgptConfigError(
            f"{path} is over {max_bytes:,} bytes ({what} holds a few MB even at hundreds of GB of shards): the file "
            f"is damaged or was not written by ngpt_ds; {fix}"
        )
    try:
        return json.loads(raw.decode("utf-8"))
    except UNPARSABLE as e:
        raise NgptConfigError(f"{path}: unreadable ({type(e).__name__}: {e}); {fix}") from None


def _refuse_irregular(fd: int, path: Path, what: str, fix: str) -> None:
    """Return when the open `fd` is a regular file; else close it and raise NgptConfigError naming what it is."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if stat.S_ISREG(mode):
        return
    os.close(fd)
    raise NgptConfigError(f"{path} is {_kind(mode)}, not a regular file ({what} is one); {fix}")


def _kind(mode: int) -> str:
    return "a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "a device"
