"""A named pipe with a writer behind it, for tests of code that must refuse a named pipe unopened: on the old code,
the open of a pipe blocks until a writer comes, so a failing run of such a test fails instead of hanging."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

FEEDER = """
import errno, os, sys, time
payload = bytes.fromhex(sys.argv[2])
while True:  # until killed: each reader that opens the pipe gets the payload and the end of the file
    try:
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_NONBLOCK)
    except OSError as err:
        if err.errno != errno.ENXIO:  # ENXIO: no reader yet
            raise
        time.sleep(0.05)
        continue
    try:
        os.write(fd, payload)
    except BlockingIOError:
        pass
    os.close(fd)
"""


@contextlib.contextmanager
def fed_pipe(pipe: Path, payload: bytes = bytes(8)) -> Iterator[Path]:
    """Make `pipe` a named pipe and, until the block ends, give every reader that opens it `payload` and the end of
    the file. The writer is a process, not a thread: safetensors' safe_open holds the GIL while it waits on the open."""
    os.mkfifo(pipe)
    feeder = subprocess.Popen([sys.executable, "-c", FEEDER, str(pipe), payload.hex()])
    try:
        yield pipe
    finally:
        feeder.kill()
        feeder.wait()
