"""Fault: `ngpt-prepare --workers N` where a low `ulimit -v` (with a large `ulimit -s`) left room for the threads that
read the corpus but not for the two threads the pool of worker processes starts in the parent (its manager, and its
task queue's feeder, each mapping a stack of `ulimit -s`). The worker children were not the ones to fail: each maps
less than the parent (measured: 0.3 GB against 2.4 GB) and starts fewer threads. The parent was:

- no room for the manager thread: a traceback of 69 lines, exit status 1, its RuntimeError ("can't start new
  thread"), then the executor's "RuntimeError: cannot join thread before it is started", then each worker's own
  ("FileNotFoundError" unpickling the pool's barrier);
- room for the manager but not for the feeder: the manager thread died with its traceback, and the preparation
  waited forever for the workers' first answer (a hang; `ulimit -s 1048576; ulimit -v 8388608` on this machine).

Now one line naming the pool's threads, the limit and the fixes (--workers 1 among them), exit status 2, before any
worker is spawned (ngpt_ds.data.encode._pool_threads_start); where the pool's thread is lost all the same, its workers
are stopped and the preparation ends on one line, never waits. The limit is set as the pool starts, at the parent's
mapped size plus `room` stacks: real limits, machine-independent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cpu_env, run_limited

STACK = 1 << 30
"""`ulimit -s` of 1 GiB: each thread maps 1 GiB, so `room` counts threads (a mapping any machine may hold)."""
LIMIT_S = 120

MAPPED = """
import resource, sys

def mapped():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))

def limit(room):  # the soft `ulimit -v`: what this process maps now plus `room` thread stacks
    size = mapped() + int(room * resource.getrlimit(resource.RLIMIT_STACK)[0])
    resource.setrlimit(resource.RLIMIT_AS, (size, resource.RLIM_INFINITY))
"""

CLI = (
    MAPPED
    + """
from ngpt_ds.data import prepare

encode_in_order = prepare.encode_in_order

def limited(*args, **kwargs):  # the limit bites where the pool starts, after the corpus was read
    limit(float(sys.argv[1]))
    yield from encode_in_order(*args, **kwargs)

prepare.encode_in_order = limited
from ngpt_ds.cli.prepare import main
sys.exit(main(sys.argv[2:]))
"""
)

POOL = (
    MAPPED
    + """
from ngpt_ds.data import encode
from ngpt_ds.errors import NgptConfigError

encode._pool_threads_start = lambda: None  # no check before the pool: what the pool's own threads do
limit(float(sys.argv[1]))
try:
    print(len(list(encode.encode_in_order([(i, ["some text"]) for i in range(4)], sys.argv[2], workers=2))))
except NgptConfigError as err:
    print(f"error: {err}")
    sys.exit(2)
"""
)


def _limited(script: str, *args, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`script` under `ulimit -s` STACK, set before exec; killed with its workers at LIMIT_S (a hang)."""
    return run_limited(
        [sys.executable, "-c", script, *args],
        timeout=LIMIT_S,
        stack=STACK,
        cwd=cwd,
        env=cpu_env(OPENBLAS_NUM_THREADS="1"),
    )


LINE = (
    "error: this process could not start a thread (ngpt-prepare's --workers processes are fed by a pool's two threads "
    "in this process, each of which maps a stack of `ulimit -s`, here 1.0 GiB) under its address-space limit "
    "(`ulimit -v`) of "
)
FIXES = (
    " of it mapped already. Raise the limit (`ulimit -v unlimited`, or a few GiB more, in the shell or job script "
    "before ngpt-prepare), or lower `ulimit -s`; or run with --workers 1, which starts no worker process and none of "
    "its threads"
)


@pytest.mark.parametrize("room", [0.5, 1.5])
def test_no_room_for_the_pools_threads_is_one_line(tmp_path, room):
    """room 0.5 (no manager thread): before, 'assert 1 == 2' and 69 lines ending "FileNotFoundError: [Errno 2] No
    such file or directory". room 1.5 (a manager, no feeder): before, 'Failed: hung: no answer in 120 s'. Now the one
    line, exit status 2, nothing written."""
    (tmp_path / "a.txt").write_text("one two three\n\nfour five six\n\n" * 50, encoding="utf-8")
    argv = ["--input", "a.txt", "--out", "out", "--vocab-size", "300", "--workers", "2", "--no-progress"]
    run = _limited(CLI, room, *argv, cwd=tmp_path)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(LINE) and last.endswith(FIXES), last
    assert not (tmp_path / "out").exists() and run.stdout == ""


def test_a_pool_whose_thread_is_lost_stops_its_workers_and_says_so(tmp_path, tiny_dataset):
    """Without the check before the pool, a feeder thread with no room (room 1.5) ends the pool's manager thread:
    before, 'Failed: hung: no answer in 120 s'. Now its workers are stopped and the line is the limit's, with no
    traceback: before (session 39), the manager thread's traceback was printed above a line that said so ('... lost its
    thread in this process (its traceback is above) ...'): 'assert 1 == 0' on the count of tracebacks. With no room
    for the manager (room 0.5) the workers already spawned are stopped too, and the line is the limit's."""
    model = tiny_dataset / "tokenizer.model"
    run = _limited(POOL, 1.5, model, cwd=tmp_path)
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.count("Traceback") == 0, run.stderr[-3000:]
    assert run.stdout.startswith(LINE) and run.stdout.strip().endswith(FIXES), run.stdout
    run = _limited(POOL, 0.5, model, cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stdout.startswith(LINE) and run.stdout.strip().endswith(FIXES), run.stdout
    run = _limited(POOL, 3, model, cwd=tmp_path)  # room for both: the 4 batches encoded
    assert run.returncode == 0 and run.stdout == "4\n", run.stderr[-3000:]
