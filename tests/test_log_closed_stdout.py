"""ngpt_ds.log when the reader of the trainer's stdout goes away (`| head`, `| grep -m1`, a killed tee)."""

import subprocess
import sys

from conftest import REPO

PROGRAM = """
import sys, time
from ngpt_ds import log
log.setup("INFO")
_log = log.get("ngpt_ds.train.loop")
time.sleep(1.0)  # the reader has gone by now
for step in range(3):
    _log.info(f"step {step} | loss 1.0")
_log.warning("a warning still reaches stderr")
print("Done: step 3/3")  # the trainer's last line, a plain print
"""


def test_a_closed_stdout_costs_neither_tracebacks_nor_the_exit_status():
    """Fault: with the trainer's stdout piped into a reader that had exited, every INFO line printed a
    20-line '--- Logging error --- ... BrokenPipeError' block on stderr (the run's real warnings buried
    under one per logged step), and the final print() raised BrokenPipeError: exit 1 after a finished run."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PROGRAM],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # the reader is gone
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, stderr
    assert stderr == "a warning still reaches stderr\n"
