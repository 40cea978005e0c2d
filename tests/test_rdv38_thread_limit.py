"""A training rank that cannot start a thread at the job's rendezvous, under a low `ulimit -u` (RLIMIT_NPROC: every
process and thread of its user counts), says one line naming the limit and the fix, exit 2, and tells the other ranks
through rank 0's store: they stop with its line within a second or two, not at train.dist_timeout_s.

The fault: two plain ranks (`python launch/train.py` with RANK, WORLD_SIZE, MASTER_ADDR set: no launcher tears the job
down), rank 1 under `ulimit -u 1`. Rank 1's lookup of MASTER_ADDR, in a thread since a18c005, failed to start and rank
1 ended on a traceback ("RuntimeError: can't start new thread"), exit 1; rank 0 waited for it the whole
train.dist_timeout_s (10 minutes by default), then said that 1 of 2 ranks 'never arrived'.

`ulimit -u` binds no process of root's: as root the limited rank runs with the real user id of `nobody` (what the
limit counts) and root's effective id (to read this checkout), without CAP_SYS_ADMIN and CAP_SYS_RESOURCE (which lift
the limit too)."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time

import pytest
from launching import rank_processes
from nobody_user import NOBODY, nobody_with

from ngpt_ds import rendezvous_failures, rendezvous_peers

from conftest import REPO, cpu_env, nobody_alone, tiny_ngpt, tiny_train, train_flags, write_run_configs

HARD = resource.getrlimit(resource.RLIMIT_NPROC)[1]


@pytest.fixture(autouse=True)
def _nobody_alone():
    """Every test here runs a process as `nobody` under a `ulimit -u` of 1 or 2, which a process of `nobody` of
    another test file counts against (conftest.nobody_alone): they take turns."""
    with nobody_alone():
        yield


def test_a_rank_under_a_low_ulimit_u_says_so_and_rank_0_stops_with_its_line(tiny_dataset, tmp_path):
    """Old code: rank 1's last line 'RuntimeError: can't start new thread', exit 1, and rank 0 ending 60 s (its
    timeout) after it with '... 1 of 2 never arrived ...'. Now rank 1 says the limit and the fix (exit 2), and rank 0
    ends with rank 1's line within rendezvous_peers.HEAR_S and a margin of rank 1's end (exit 1)."""
    files = write_run_configs(tmp_path, tiny_ngpt(), tiny_train(2, dist_timeout_s=60))
    cmd = [
        sys.executable,
        REPO / "launch/train.py",
        *train_flags(files["yaml"], files["ds"], tiny_dataset, tmp_path / "run"),
    ]
    ended: dict[int, tuple[int, str, float]] = {}
    with rank_processes([cmd, cmd], cwd=tmp_path, preexec={1: nobody_with(1)}) as procs:  # rank 1: `ulimit -u 1`
        while len(ended) < 2:
            for rank, proc in enumerate(procs):
                if rank not in ended and proc.poll() is not None:
                    ended[rank] = (proc.returncode, proc.stderr.read(), time.monotonic())
            assert not any(time.monotonic() - end > 120 for *_, end in ended.values()), ended
            time.sleep(0.05)
    (code0, err0, end0), (code1, err1, end1) = ended[0], ended[1]
    uid = NOBODY if os.geteuid() == 0 else os.getuid()
    line = (
        f"rank 1 could not start a thread for the job's rendezvous: its user (uid {uid}) may run 1 processes and "
        "threads in all (`ulimit -u`), and runs "
    )
    raised = (
        "Raise it (`ulimit -u unlimited`"
        if HARD == resource.RLIM_INFINITY
        else f"Raise it, up to its hard limit of {HARD} (`ulimit -u {HARD}`"
    )
    fix = (
        f", and a rank starts dozens of threads (torch's store, gloo, its checks). {raised} in the shell or job "
        "script before the training command), and start the job again"
    )
    last1 = err1.strip().splitlines()[-1]
    assert (code1, last1.startswith(f"error: {line}"), last1.endswith(fix)) == (2, True, True), err1[-3000:]
    assert "Traceback" not in err1, err1[-3000:]
    assert code0 == rendezvous_failures.EXIT_CODE, err0[-3000:]
    assert err0.strip().splitlines()[-1] == f"error: rank 0 stops: {last1.removeprefix('error: ')}", err0[-3000:]
    assert end0 - end1 < rendezvous_peers.HEAR_S + 5, end0 - end1  # old: 60 s (train.dist_timeout_s) or more


BACKSTOP = """
from ngpt_ds import rendezvous_failures, rendezvous_peers
from ngpt_ds.distributed import DistEnv

print(rendezvous_failures.message(DistEnv(1, 2, 1, 2, "127.0.0.1", 29500, "torch"), 20))
"""


def _backstop_line(tmp_path, soft: int) -> str:
    """rendezvous_failures.message, the backstop's line, in a process whose user may run `soft` tasks."""

    done = subprocess.run(
        [sys.executable, "-c", BACKSTOP],
        env=cpu_env(),
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=nobody_with(soft),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_the_backstop_of_a_rank_at_its_ulimit_u_names_it(tmp_path):
    """The fault: a rank under `ulimit -u 5` whose gloo or store thread could not start did not always raise: it hung
    in torch's rendezvous (rank 0 had met it and gone on) until the backstop, 50 s at a 20 s timeout, whose line
    said only 'a rank hangs (read the ranks' logs)'. Now, where the rank's user runs as many tasks as the limit
    allows (or one less), the line names the limit. Old code: the line without the clause. A limit with room left
    (1000 here, a cluster's thousands) is not named."""
    start = (
        "rank 1 waited 50 s (twice train.dist_timeout_s, 20 s, and 10) for the job's rendezvous on 127.0.0.1:29500, "
        "which neither met nor failed: a rank hangs (read the ranks' logs)"
    )
    end = ". Start the job again; it resumes from its newest checkpoint"
    uid = NOBODY if os.geteuid() == 0 else os.getuid()
    runs = 1 if os.geteuid() == 0 else r"\d+"  # `nobody` runs this process alone; another user, more
    assert re.fullmatch(
        re.escape(
            f"{start}; this rank's user (uid {uid}) may run 2 processes and threads in all (`ulimit -u`), of which "
        )
        + f"it runs {runs} now"
        + re.escape(f": a thread it could not start may be what hangs, and raising the limit the fix{end}"),
        _backstop_line(tmp_path, 2),
    ), _backstop_line(tmp_path, 2)
    assert _backstop_line(tmp_path, 1000) == f"{start}{end}"
