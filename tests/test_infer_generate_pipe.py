"""launch/generate.py into a pipe whose reader is gone (`ngpt-generate ... | head -1`) stops quietly, as
`yes | head -1` does."""

import os
import subprocess
import sys

import pytest
from test_infer_export_load import small_export  # noqa: F401  (module fixture)

from conftest import REPO, cpu_env


@pytest.mark.parametrize("echo", [True, False], ids=["echo", "no_echo"])
def test_generate_into_a_closed_pipe_exits_141_without_a_traceback(small_export, echo):  # noqa: F811
    """Fault: when stdout's reader had gone, the first write (the echoed prompt, or with --no-echo the first
    generated piece) ended generate.py with a BrokenPipeError traceback (17 to 23 lines) and exit status 1. Now it
    stops at once with status 141 (128 + SIGPIPE, as a shell reports such a command) and nothing on stderr
    after the line that names the model."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: no timing involved
    try:
        proc = subprocess.run(
            [
                sys.executable,
                REPO / "launch" / "generate.py",
                small_export,
                "--prompt",
                "In the beginning",
                "--max-new-tokens",
                "20",
                "--ignore-eos",
                "--seed",
                "1",
                *([] if echo else ["--no-echo"]),
            ],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=cpu_env(),
            cwd=REPO,
            timeout=300,
        )
    finally:
        os.close(write_end)
    lines = proc.stderr.splitlines()
    assert (proc.returncode, len(lines)) == (141, 1), proc.stderr[-3000:]
    assert lines[0] == (f"loaded nGPT 2 layers, d 32, 2 heads, context 32, vocab 512 (export {small_export}) on cpu"), (
        proc.stderr[-3000:]
    )
