"""An mpirun job without MASTER_ADDR whose rank 0 cannot start the thread that looks up its own host name
(ngpt_ds.host_address) under a low `ulimit -u` (RLIMIT_NPROC: every process and thread of its user counts) stops
every rank with one line naming the limit and the fix, as the other thread-limit paths do (ngpt_ds.limits).

The fault: the thread's RuntimeError ("can't start new thread") went up from rank 0's choice of the job's address,
before its MPI broadcast of it. distributed.discover() ended on that traceback on rank 0; under the training command
rank 0 printed ngpt_ds.limits' line, rank 1 nothing: it waited in the broadcast, rank 0 for it at its exit, and the
job hung (killed by the test after 150 s).

Real 2-rank mpirun jobs, one rank a host (as multi-node: rank 0 then looks its name up). The limit is set in rank 0
after MPI_Init (whose own threads it would stop first): a `ulimit -u` of 1 and, as root, the real user id of `nobody`
(what the limit counts) without CAP_SYS_ADMIN and CAP_SYS_RESOURCE (which lift it), root's effective id kept to read
this checkout."""

from __future__ import annotations

import importlib.util
import os
import resource
import shutil
import socket
import sys

import pytest
from nobody_user import NOBODY

from conftest import (
    cpu_env,
    nobody_alone,
    require_system,
    run_mpirun,
    tiny_ngpt,
    tiny_train,
    train_flags,
    write_run_configs,
)

RANK = """
import ctypes, os, resource, sys
os.environ.update(OMPI_COMM_WORLD_LOCAL_SIZE="1", OMPI_COMM_WORLD_LOCAL_RANK="0")  # one rank a host, as multi-node
from mpi4py import MPI  # MPI_Init and its threads, before the limit

rank = int(os.environ["OMPI_COMM_WORLD_RANK"])
said = open(f"{sys.argv[1]}/rank{rank}", "w")  # one file a rank: mpirun interleaves the ranks' output
os.dup2(said.fileno(), 1)
os.dup2(said.fileno(), 2)


class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


if rank == 0:
    resource.setrlimit(resource.RLIMIT_NPROC, (1, resource.getrlimit(resource.RLIMIT_NPROC)[1]))
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
        assert libc.capget(ctypes.byref(header), data) == 0, ctypes.get_errno()
        for cap in (21, 24):  # CAP_SYS_ADMIN, CAP_SYS_RESOURCE
            data[0].effective &= ~(1 << cap)
            data[0].permitted &= ~(1 << cap)
        assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()
        os.setresuid(int(sys.argv[2]), 0, 0)
from ngpt_ds.cli.train import main

sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(autouse=True)
def _nobody_alone():
    """Rank 0 runs as `nobody` under a `ulimit -u` of 1, which a process of `nobody` of another test counts against
    (conftest.nobody_alone): they take turns."""
    with nobody_alone():
        yield


def test_rank_0_that_cannot_start_its_host_name_lookup_stops_every_rank_with_the_limits_line(tmp_path, tiny_dataset):
    """Old code: 'Failed: hung: no answer in 150 s' (rank 0 had said the limit, rank 1 nothing). Now rank 0 says
    the limit and the fix, rank 1 the same line as rank 0's reason, and the job ends, exit 2."""
    require_system(
        shutil.which("mpirun") is not None and importlib.util.find_spec("mpi4py") is not None,
        "OpenMPI or mpi4py not installed: bash launch/setup.sh --test",
    )
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    files = write_run_configs(tmp_path, tiny_ngpt(), tiny_train(2, dist_timeout_s=60))
    flags = train_flags(files["yaml"], files["ds"], tiny_dataset, tmp_path / "run")
    env = {k: v for k, v in cpu_env().items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    code, output = run_mpirun(["-np", "2", sys.executable, script, tmp_path, NOBODY, *flags], env, timeout=150)
    said = {rank: (tmp_path / f"rank{rank}").read_text() for rank in (0, 1)}
    assert "Traceback" not in said[0] + said[1], (said, output[-3000:])
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    raised = (
        "Raise it (`ulimit -u unlimited`"
        if hard == resource.RLIM_INFINITY
        else f"Raise it, up to its hard limit of {hard} (`ulimit -u {hard}`"
    )
    uid = NOBODY if os.geteuid() == 0 else os.getuid()
    line = (
        f"rank 0 could not start a thread to look up this host's name {socket.gethostname()!r} (for the address the "
        f"other ranks reach rank 0 at): its user (uid {uid}) may run 1 processes and threads in all (`ulimit -u`), "
        "and runs "
    )
    fix = (
        f", and a rank starts dozens of threads (torch's store, gloo, its checks). {raised} in the shell or job script "
        "before the training command), and start the job again"
    )
    last = {rank: said[rank].strip().splitlines()[-1] for rank in (0, 1)}
    assert last[0].startswith(f"error: {line}") and last[0].endswith(fix), (said, output[-3000:])
    reason = last[0].removeprefix("error: ")
    assert last[1] == f"error: rank 0 cannot choose the job's rendezvous address: {reason}", (said, output[-3000:])
    assert code == 2, (code, output[-3000:])
