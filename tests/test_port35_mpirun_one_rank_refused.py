"""A refusal on one rank of an mpirun job without MASTER_ADDR / MASTER_PORT: every rank stops with it in one line.

The fault: the trainer's ranks agree on such a refusal through the process group (ngpt_ds.train.agreement): the
refused rank runs the launch discovery again to join it. Under mpirun without MASTER_ADDR, discovery broadcasts rank
0's rendezvous over MPI; run again on the refused rank alone, its broadcast paired with nothing. It waited there for
good, rank 0 waited train.dist_timeout_s in the rendezvous for it, and then in MPI_Finalize for good: the job hung,
and nobody printed the refusal. The rendezvous is now agreed once a process (ngpt_ds.distributed._mpi_agreed).
A real 2-rank mpirun training job on gloo; rank 1 alone is given an unreadable NGPT_DS_NODE_MEMORY_BYTES."""

from __future__ import annotations

import importlib.util
import shutil
import sys

import pytest

from conftest import REPO, cpu_env, require_system, run_mpirun, tiny_ngpt, tiny_train, train_flags, write_run_configs

REFUSAL = (
    "NGPT_DS_NODE_MEMORY_BYTES='16G' must be the node's memory as a whole number of bytes, e.g. 68719476736 for "
    "64 GiB; or unset it to use the node's own"
)


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("port35_configs")
    return write_run_configs(folder, tiny_ngpt(), tiny_train(4, dist_timeout_s=20))


def test_a_refusal_on_one_mpirun_rank_stops_every_rank_in_one_line(configs, tiny_dataset, tmp_path):
    """Fault: the refused rank's second discovery broadcast alone, and the job hung (old code: killed after 150 s,
    no refusal printed). Now every rank stops with exit 2 and the refused rank's line."""
    require_system(
        shutil.which("mpirun") is not None and importlib.util.find_spec("mpi4py") is not None,
        "OpenMPI or mpi4py not installed: bash launch/setup.sh --test",
    )
    env = {k: v for k, v in cpu_env().items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    train = [sys.executable, str(REPO / "launch/train.py")]
    train += [str(word) for word in train_flags(configs["yaml"], configs["ds"], tiny_dataset, tmp_path / "out")]
    # Two application contexts (MPMD): rank 0 as it is, rank 1 with the variable its own node would set.
    returncode, output = run_mpirun(
        ["-np", "1", *train, ":", "-np", "1", "env", "NGPT_DS_NODE_MEMORY_BYTES=16G", *train], env, timeout=150
    )
    assert returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors and all(REFUSAL in line for line in errors), output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert not (tmp_path / "out" / "checkpoints").exists()
