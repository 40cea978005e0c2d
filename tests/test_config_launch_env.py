"""The launch environment a run reads its rank and world from: torchrun, Slurm, MPI (ngpt_ds.distributed)."""

import pytest

from ngpt_ds import distributed
from ngpt_ds.errors import NgptConfigError


def test_launch_environment_discovery():
    torch_env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_PORT": "29500"}
    torch_env["MASTER_ADDR"] = "10.0.0.1"  # another node: its rank count is LOCAL_WORLD_SIZE's
    env = distributed.discover(torch_env)
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (1, 2, 1, 2)
    assert (env.master_addr, env.source) == ("10.0.0.1", "torch")
    with pytest.raises(NgptConfigError, match=r"RANK set but WORLD_SIZE, MASTER_ADDR, MASTER_PORT missing"):
        distributed.discover({"RANK": "0"})
    slurm = {
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "4",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_TASKS_PER_NODE": "2(x2)",
        "SLURM_JOB_ID": "1234",
    }
    env = distributed.discover(slurm)
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size, env.source) == (3, 4, 1, 2, "slurm")
    assert env.master_addr == "gpu07" and env.master_port == 21234
    # The batch step of an sbatch script (no SLURM_STEP_ID) is not a rank of the job.
    batch_step = {k: v for k, v in slurm.items() if k != "SLURM_STEP_ID"}
    assert distributed.discover(batch_step).source == "single"
    mpi = {
        "OMPI_COMM_WORLD_RANK": "1",
        "OMPI_COMM_WORLD_SIZE": "2",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29555",
    }
    env = distributed.discover(mpi)
    assert (env.rank, env.world_size, env.master_port, env.source) == (1, 2, 29555, "mpi")
    assert distributed.discover({}).source == "single"
    with pytest.raises(NgptConfigError, match=r"rank 5 is outside world size 2"):
        distributed.discover({**torch_env, "RANK": "5"})


def test_slurm_nodelist_expansion():
    assert distributed.expand_nodelist("gpu[01-03,7],login1") == ["gpu01", "gpu02", "gpu03", "gpu7", "login1"]
    assert distributed.expand_nodelist("node1,node2") == ["node1", "node2"]
