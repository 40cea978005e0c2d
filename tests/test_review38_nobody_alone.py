"""The test files that run processes as `nobody` under a `ulimit -u` of 1 or 2 take turns (conftest.nobody_alone).

Fault (review of 3e7ffa4 and d3dc2f3): tests/test_rdv38_thread_limit.py and tests/test_rdvb38_task_limit_commands.py
both run processes with the real uid of `nobody` and RLIMIT_NPROC 1 or 2, which counts every task of that user on the
machine. Run at once (the two pytest-xdist workers of tests/run.sh, or two pytest runs on a shared machine), a process
of one made the other's exec fail: 'BlockingIOError: [Errno 11] Resource temporarily unavailable' (seen in
test_a_rank_under_a_low_ulimit_u_says_so_and_rank_0_stops_with_its_line), or its line say 'of which it runs 2 now'
where test_the_backstop_of_a_rank_at_its_ulimit_u_names_it asserts 1 (seen 2 runs of 3). Old code: no nobody_alone
(ImportError)."""

from __future__ import annotations

import ctypes
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, nobody_alone

NOBODY = 65534

HOLDER = """
import os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from nobody_user import nobody_alone
with nobody_alone():
    sleepers = [subprocess.Popen(["sleep", "4"], preexec_fn=lambda: os.setresuid(65534, 65534, 65534)) for _ in "ab"]
    print("held", flush=True)
    for sleeper in sleepers:
        sleeper.wait()
"""


def _tasks_of_nobody() -> int:
    count = 0
    for status in Path("/proc").glob("[0-9]*/task/[0-9]*/status"):
        try:
            uid = next(line for line in status.read_text().splitlines() if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        count += int(uid.split()[1]) == NOBODY
    return count


def _as_nobody_with_one_task() -> subprocess.CompletedProcess | BlockingIOError:
    def limited() -> None:  # as the two files' _one_task_user: exec's root keeps neither capability that lifts it
        resource.setrlimit(resource.RLIMIT_NPROC, (1, resource.getrlimit(resource.RLIMIT_NPROC)[1]))
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (21, 24):  # CAP_SYS_ADMIN, CAP_SYS_RESOURCE, dropped from the bounding set (PR_CAPBSET_DROP)
            assert libc.prctl(24, cap, 0, 0, 0) == 0, ctypes.get_errno()
        os.setresuid(NOBODY, 0, 0)

    try:
        return subprocess.run(["true"], preexec_fn=limited, check=False)
    except BlockingIOError as err:
        return err


@pytest.mark.skipif(os.geteuid() != 0, reason="runs processes as nobody: needs root")
def test_a_process_of_nobody_makes_another_ones_exec_fail_and_the_lock_makes_them_take_turns():
    with nobody_alone():  # the mechanism, with no other file's process of nobody about
        # two tasks of nobody (another file's command and its thread, say): the limit of 1 is passed at the setuid,
        # and the kernel fails the exec that follows (Linux's PF_NPROC_EXCEEDED)
        sleepers = [
            subprocess.Popen(["sleep", "30"], preexec_fn=lambda: os.setresuid(NOBODY, NOBODY, NOBODY)) for _ in range(2)
        ]
        try:
            failed = _as_nobody_with_one_task()
        finally:
            for sleeper in sleepers:
                sleeper.kill()
                sleeper.wait()
        assert isinstance(failed, BlockingIOError), failed  # the exec of a second process of nobody under `ulimit -u 1`
        assert _as_nobody_with_one_task().returncode == 0  # alone, it runs
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(REPO / "tests")], stdout=subprocess.PIPE, text=True
    )  # another test file's process of nobody, under the lock
    try:
        assert holder.stdout.readline() == "held\n"
        start = time.monotonic()
        with nobody_alone():
            waited = time.monotonic() - start
            assert _tasks_of_nobody() == 0  # the holder's two `sleep 4` have ended before the lock is ours
            assert _as_nobody_with_one_task().returncode == 0
        assert waited > 2, waited
    finally:
        holder.kill()
        holder.wait()
