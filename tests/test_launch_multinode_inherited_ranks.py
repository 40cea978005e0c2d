"""launch/multinode.sh mpi: torchrun's variables left in the shell do not reach the ranks, which take theirs
from Open MPI. Run here against a fake `mpirun` on PATH that starts one rank of two (as Open MPI sets
OMPI_COMM_WORLD_*) in the script's environment and records what rank discovery (ngpt_ds/distributed.py)
gives it.

The fault: mpirun's ranks on the node it runs on inherit its whole environment. From a shell where a run had
been started by hand (RANK=0 WORLD_SIZE=1 MASTER_ADDR=... MASTER_PORT=... exported), each of them read
RANK and WORLD_SIZE before Open MPI's variables and trained as rank 0 of 1, on the same --out, while the
ranks of the other nodes waited train.dist_timeout_s for them.
"""

import os
import subprocess

from conftest import REPO, stand_in_commands

FAKE_MPIRUN = """#!/bin/bash
# Rank 1 of 2 on this node, as Open MPI starts it: mpirun's environment plus OMPI_COMM_WORLD_*.
OMPI_COMM_WORLD_RANK=1 OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_LOCAL_RANK=1 OMPI_COMM_WORLD_LOCAL_SIZE=2 \\
  PYTHONPATH="$FAKE_REPO" \\
  python3 -c 'from ngpt_ds.distributed import discover; d = discover(); print(d.source, d.rank, d.world_size)' \\
  >> "$FAKE_LOG" 2>&1
"""


def test_mpi_ranks_come_from_open_mpi_not_from_the_shell(tmp_path):
    """Fault: RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 left in the shell made this node's ranks rank 0 of 1."""
    folder = stand_in_commands(tmp_path / "bin", {"mpirun": FAKE_MPIRUN})
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "LOCAL_", "OMPI_", "MPI_"))}
    env.update(
        PATH=f"{folder}:{env['PATH']}",
        FAKE_LOG=str(tmp_path / "fake.log"),
        FAKE_REPO=str(REPO),
        STOP_GRACE_S="25",
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT="29511",
    )
    proc = subprocess.run(
        ["bash", REPO / "launch/multinode.sh", "mpi", hostfile, "--out", tmp_path / "run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    assert (tmp_path / "fake.log").read_text() == "mpi 1 2\n"
    assert proc.stderr == "warning: ignoring RANK WORLD_SIZE LOCAL_RANK from this shell: the ranks come from mpirun\n"
