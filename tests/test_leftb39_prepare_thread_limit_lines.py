"""ngpt-prepare --input under a `ulimit -u` that leaves it no thread (RLIMIT_NPROC: every process and thread of the
user counts) prints the limit's one line (ngpt_ds.limits) and nothing above it.

The fault: above that line came datasets' libraries' own: pyarrow's "<jemalloc>: arena 0 background thread creation
failed (11)" and tqdm's "TqdmMonitorWarning: tqdm:disabling monitor support (monitor_interval = 0) due to: can't start
new thread" (with the source line it warned from), naming no limit and no fix; without OPENBLAS_NUM_THREADS=1, numpy's
OpenBLAS could not start its thread at numpy's import, printed its 'pthread_create failed' lines and raised SIGINT:
the command ended on "interrupted", exit 130, as if Ctrl-C had stopped it. Real processes under the real limit, as
`nobody` (nobody_user.nobody_with), one at a time (conftest.nobody_alone)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from nobody_user import NOBODY, nobody_with

from conftest import cpu_env, nobody_alone

ROOT = Path(__file__).resolve().parents[1]
HARD = resource.getrlimit(resource.RLIMIT_NPROC)[1]


@pytest.fixture(autouse=True)
def _nobody_alone():
    with nobody_alone():
        yield


@pytest.mark.parametrize(
    "tasks, openblas",
    [
        (1, "1"),  # old: the jemalloc line and tqdm's warning (3 lines) above ours
        (2, "1"),  # old: tqdm's warning (3 lines) above ours
        (1, None),  # no OPENBLAS_NUM_THREADS nor OMP_NUM_THREADS: old, OpenBLAS's 4 lines and 'interrupted', exit 130
    ],
)
def test_prepare_under_a_ulimit_u_leaving_no_thread_prints_only_the_limits_line(tmp_path, tasks, openblas):
    (tmp_path / "a.txt").write_text("one two three\n\nfour five six\n\n" * 50, encoding="utf-8")
    env = {k: v for k, v in cpu_env().items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    if openblas is not None:
        env["OPENBLAS_NUM_THREADS"] = openblas
    cmd = [sys.executable, ROOT / "launch" / "prepare_data.py", "--input", "a.txt", "--out", "out", "--vocab-size", 300]
    done = subprocess.run(
        [str(c) for c in cmd],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=nobody_with(tasks),
        check=False,
    )
    uid = NOBODY if os.geteuid() == 0 else os.getuid()
    where = "in the shell or job script before ngpt-prepare"
    fix = (
        f"Raise it (`ulimit -u unlimited` {where}), and run it again"
        if HARD == resource.RLIM_INFINITY
        else f"Raise it, up to its hard limit of {HARD} (`ulimit -u {HARD}` {where}), and run it again"
    )
    line = (
        "error: this process could not start a thread (datasets reads a corpus with threads): its user (uid "
        f"{uid}) may run {tasks} processes and threads in all (`ulimit -u`), and runs "
    )
    lines = done.stderr.strip().splitlines()
    assert (done.returncode, len(lines)) == (2, 1), done.stderr[-3000:]
    assert lines[0].startswith(line) and lines[0].endswith(f" now. {fix}"), lines[0]
    assert done.stdout == "" and not (tmp_path / "out").exists()
