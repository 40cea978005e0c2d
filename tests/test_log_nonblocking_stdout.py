"""ngpt_ds.log when the trainer's stdout is a pipe set O_NONBLOCK (ssh, which pdsh and DeepSpeed's multinode
runner use, sets it on the descriptors it shares) and its reader is slow: the pipe fills, a write is refused
with EAGAIN, and the log must wait for the reader instead of losing lines."""

import fcntl
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO

LINES = 2000  # 2000 x 150 bytes = 300 KB: the 64 KiB pipe is full after 436 lines
PROGRAM = f"""
from ngpt_ds import log
log.setup("INFO")
_log = log.get("ngpt_ds.train.loop")
for step in range({LINES}):
    _log.info(f"step {{step:05d}} | loss 1.0 | " + "x" * 125)
_log.warning("a warning still reaches stderr")
"""


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "python -u"])
def test_a_slow_reader_of_a_non_blocking_stdout_gets_every_line(unbuffered):
    """Fault: buffered, the first refused write (BlockingIOError) was taken as a dead stream and stdout went to
    /dev/null for good: 432 of 2000 lines arrived, then 'warning: the log lines to stdout cannot be written
    (Resource temporarily unavailable) ...'. Unbuffered (`python -u`, how the launchers start ranks), the
    refusals were ignored without a word: the same 432 lines, then 46 bare newlines and nothing more."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETFL, fcntl.fcntl(write_end, fcntl.F_GETFL) | os.O_NONBLOCK)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    flags = ["-u"] if unbuffered else []
    proc = subprocess.Popen(
        [sys.executable, *flags, "-c", PROGRAM], cwd=REPO, env=env, stdout=write_end, stderr=subprocess.PIPE
    )
    os.close(write_end)
    time.sleep(1.0)  # the reader pauses; the pipe fills
    with os.fdopen(read_end, "rb") as reader:
        out = reader.read().decode()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, stderr
    assert out.splitlines() == [f"step {step:05d} | loss 1.0 | " + "x" * 125 for step in range(LINES)]
    assert stderr == "a warning still reaches stderr\n"
