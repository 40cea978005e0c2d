"""ngpt-prepare --workers N: a thread of the pool that cannot start is ngpt_ds's one line, with no traceback above it.

Faults:
- each worker process starts a thread that watches the parent (encode._init_pool_worker, `_exit_with_parent`) outside
  the `try` that keeps the worker's errors for the parent to name: a worker that could not start it (a low `ulimit -u`,
  every process and thread of the user counted) ended its initializer on "RuntimeError: can't start new thread", a
  traceback per worker, and the parent stopped on the broken pool's line, naming a killed worker;
- the pool's manager thread in the parent ending on a thread it could not start (its task queue's feeder, under a low
  `ulimit -v`: tests/test_house38_prepare_workers_limit.py) printed its traceback above the line, which said 'its
  traceback is above'. That thread's error is now the line's cause, and the line is the limit's.

Real limits: the worker's `ulimit -u` of 1 is set in each worker process at its start (a sitecustomize of the test's,
which only a process started with --multiprocessing-fork, a pool worker, acts on), the command running as `nobody`
(the limit binds no process of root's), its own limit left as it is; taking turns with the other tests that run
processes as `nobody` (nobody_user.nobody_alone)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from conftest import REPO, cpu_env, nobody_alone

NOBODY = 65534
PR_CAPBSET_DROP, CAP_SYS_ADMIN, CAP_SYS_RESOURCE = 24, 21, 24

SITE = """
import resource, sys

if "--multiprocessing-fork" in sys.argv:  # a pool worker: no thread beside its main one
    resource.setrlimit(resource.RLIMIT_NPROC, (1, resource.getrlimit(resource.RLIMIT_NPROC)[1]))
"""

POOL = """
import sys
from ngpt_ds.data import encode
from ngpt_ds.errors import NgptConfigError

try:
    print(len(list(encode.encode_in_order([(i, ["some text"]) for i in range(4)], sys.argv[1], workers=2))))
except NgptConfigError as err:
    print(f"error: {err}")
    sys.exit(2)
"""


@pytest.fixture(autouse=True)
def _nobody_alone():
    with nobody_alone():
        yield


def _as_nobody() -> None:
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (CAP_SYS_ADMIN, CAP_SYS_RESOURCE):  # dropped from the bounding set: exec's root keeps neither
            assert libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0, ctypes.get_errno()
        os.setresuid(NOBODY, 0, 0)


def test_a_worker_that_cannot_start_its_thread_is_one_line(tmp_path, tiny_dataset):
    """Old code: 'error: a tokenizer worker process ended abruptly (killed: ...' and a traceback per worker ending
    "RuntimeError: can't start new thread"."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE, encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-c", POOL, str(tiny_dataset / "tokenizer.model")],
        cwd=tmp_path,
        env=cpu_env(OPENBLAS_NUM_THREADS="1", PYTHONPATH=f"{site}{os.pathsep}{REPO}"),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_as_nobody,
        check=False,
    )
    assert (run.returncode, "Traceback" in run.stderr) == (2, False), run.stdout + run.stderr[-3000:]
    uid = NOBODY if os.geteuid() == 0 else os.getuid()
    line = run.stdout.strip()
    assert line.startswith(
        "error: a worker process could not start a thread (each --workers process watches ngpt-prepare's own process "
        f"with a thread): its user (uid {uid}) may run 1 processes and threads in all (`ulimit -u`), and runs "
    ), line
    assert line.endswith(
        "and run it again; or run with --workers 1, which starts no worker process and none of its threads"
    ), line
