"""Fault: `ngpt-prepare --verify DIR` (its progress bar on, the default) under a low `ulimit -u` (RLIMIT_NPROC: every
process and thread of the user counts). tqdm's bar (ngpt_ds.data.shard_check.verify_shards) starts a monitor thread,
and where it cannot start one tqdm printed its own three-line TqdmMonitorWarning ("tqdm:disabling monitor support
(monitor_interval = 0) due to: can't start new thread") above the command's lines. Only ngpt_ds's lines show now:
the bar needs no monitor thread (it refreshes on each update).

The command under the real limit (1 task: its main thread and no other), with the real user id of `nobody` (the limit
binds no process of root's) and root's effective id, as tests/test_rdvb38_task_limit_commands.py runs its commands;
the two files take turns (nobody_user.nobody_alone)."""

from __future__ import annotations

import ctypes
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cpu_env, nobody_alone

NOBODY = 65534
PR_CAPBSET_DROP, CAP_SYS_ADMIN, CAP_SYS_RESOURCE = 24, 21, 24


@pytest.fixture(autouse=True)
def _nobody_alone():
    with nobody_alone():
        yield


def _one_task_user() -> None:
    """In the child before exec: a `ulimit -u` of 1 (the hard limit kept) and, as root, `nobody`'s real user id with
    root's effective one, CAP_SYS_ADMIN and CAP_SYS_RESOURCE (which lift the limit too) dropped."""
    resource.setrlimit(resource.RLIMIT_NPROC, (1, resource.getrlimit(resource.RLIMIT_NPROC)[1]))
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (CAP_SYS_ADMIN, CAP_SYS_RESOURCE):
            assert libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0, ctypes.get_errno()
        os.setresuid(NOBODY, 0, 0)


def _as_one_task_user(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python args` in cwd under _one_task_user, one BLAS thread; its exit status and output."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=cpu_env(OPENBLAS_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_one_task_user,
        check=False,
    )


def test_verify_under_a_low_ulimit_u_prints_only_its_own_lines(tiny_dataset, tmp_path):
    run = _as_one_task_user([str(REPO / "launch" / "prepare_data.py"), "--verify", str(tiny_dataset)], tmp_path)
    # old code: the lines before ngpt_ds's own were tqdm's warning, its "can't start new thread" and its source line
    assert (run.returncode, run.stdout) == (0, f"{tiny_dataset}\n"), run.stderr[-3000:]
    others = [line for line in run.stderr.splitlines() if line.strip() and not line.startswith("verifying:")]
    assert others == [f"{tiny_dataset}: every shard block matches meta.json"], run.stderr[-3000:]
    assert "verifying: 100%" in run.stderr, run.stderr[-3000:]  # the bar is still drawn


OPEN = """
import sys
from ngpt_ds.data import shards

print(shards.load_dataset_meta(sys.argv[1]).data_dir)
"""


def test_opening_a_dataset_under_a_low_ulimit_u_prints_nothing_of_tqdms(tiny_dataset, tmp_path):
    """The sampled check every command makes as it opens a dataset (shard_check.check_shard_contents: the trainer,
    before its rendezvous, whose one line under this limit names it) draws no bar, and tqdm's disabled bar still
    started its monitor thread: its warning was printed above the command's own line. Old code: stderr held
    'TqdmMonitorWarning: tqdm:disabling monitor support ...'."""
    run = _as_one_task_user(["-c", OPEN, str(tiny_dataset)], tmp_path)
    assert (run.returncode, run.stdout, run.stderr) == (0, f"{tiny_dataset}\n", ""), run.stderr[-3000:]
