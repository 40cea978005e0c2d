"""ngpt_ds.log when the file the trainer's stdout is redirected to cannot be written (Slurm's output
file on a full disk)."""

import subprocess
import sys

from conftest import REPO, require_system

PROGRAM = """
from ngpt_ds import log
log.setup("INFO")
_log = log.get("ngpt_ds.train.loop")
for step in range(3):
    _log.info(f"step {step} | loss 1.0")
_log.warning("a warning still reaches stderr")
print("Done: step 3/3")  # the trainer's last line, a plain print
"""


def test_stdout_on_a_full_disk_costs_neither_tracebacks_nor_the_exit_status(tmp_path):
    """Fault: with the trainer's stdout redirected to a file on a full disk, every INFO line printed a
    '--- Logging error --- ... OSError: [Errno 28] No space left on device' block on stderr, and the
    final print() raised: exit 1 after a finished run (a tiny run: 33 such blocks, then a traceback)."""
    full = tmp_path / "full"
    full.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4096", "tmpfs", str(full)], capture_output=True, text=True
    )
    require_system(proc.returncode == 0, f"mounting a small tmpfs needs root: {proc.stderr.strip()}")
    try:
        (full / "filler").write_text("x")  # the one page is taken: the next write to another file fails
        with open(full / "slurm.out", "w") as stdout:
            proc = subprocess.run(
                [sys.executable, "-c", PROGRAM], cwd=REPO, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60
            )
    finally:
        subprocess.run(["umount", str(full)], check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == (
        "warning: the log lines to stdout cannot be written (No space left on device) and are discarded from now "
        "on; the run goes on, and metrics.jsonl and TensorBoard keep its records\n"
        "a warning still reaches stderr\n"
    )
