"""Rank discovery of `mpirun` started inside a Slurm job (an sbatch script, or salloc): the ranks are
Open MPI's, not the Slurm step's (ngpt_ds/distributed.py).

The fault: Open MPI's mpirun starts its per-node daemons with srun, and the ranks inherit that step's
SLURM_PROCID / SLURM_NTASKS / SLURM_STEP_ID, which count daemons (one per node), not ranks. Discovery
read Slurm before MPI, so on one node every rank of `mpirun -np 4` was rank 0 of a world of 1 (four
separate trainers on one --out and one port), and on two nodes each node's ranks all claimed that
node's index in a world of 2. Under srun's own MPI plugins (--mpi=pmix, pmi2) the two agree.
"""

import importlib.util
import os
import shutil

from ngpt_ds import distributed

from conftest import REPO, require_system

# Rank 3 of `mpirun -np 4` on two nodes of two slots, in an sbatch job: what Open MPI and the daemon's
# Slurm step (one task per node) give it, as seen on tests/system/slurm_cluster.sh.
MPIRUN_IN_SLURM = {
    "OMPI_COMM_WORLD_RANK": "3",
    "OMPI_COMM_WORLD_SIZE": "4",
    "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
    "SLURM_PROCID": "1",
    "SLURM_NTASKS": "2",
    "SLURM_STEP_ID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "1",
    "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_JOB_ID": "7",
    "MASTER_ADDR": "10.0.0.1",
    "MASTER_PORT": "29500",
}


def test_mpirun_ranks_inside_a_slurm_job_are_open_mpis():
    """Fault: mpirun's ranks inside a Slurm job took the daemon step's SLURM_PROCID / SLURM_NTASKS."""
    env = distributed.discover(MPIRUN_IN_SLURM)
    assert env == distributed.DistEnv(3, 4, 1, 2, "10.0.0.1", 29500, "mpi")
    one_node = {**MPIRUN_IN_SLURM, "OMPI_COMM_WORLD_LOCAL_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "3"}
    one_node.update(SLURM_PROCID="0", SLURM_NTASKS="1", SLURM_NODEID="0", SLURM_STEP_TASKS_PER_NODE="1")
    assert distributed.discover(one_node) == distributed.DistEnv(3, 4, 3, 4, "10.0.0.1", 29500, "mpi")


def test_every_rank_of_mpirun_inside_slurm_takes_the_same_way():
    """One rank a node on 3 nodes, ranks 1 and 2 mapped against the node order: rank 0's SLURM_PROCID and
    SLURM_NTASKS look right, yet it must meet its peers as they do, through MPI, or each side waits."""
    step = {**MPIRUN_IN_SLURM, "OMPI_COMM_WORLD_SIZE": "3", "SLURM_NTASKS": "3", "SLURM_STEP_TASKS_PER_NODE": "1(x3)"}
    step.update(OMPI_COMM_WORLD_LOCAL_RANK="0", OMPI_COMM_WORLD_LOCAL_SIZE="1", SLURM_JOB_NUM_NODES="3")
    found = [
        distributed.discover({**step, "OMPI_COMM_WORLD_RANK": str(rank), "SLURM_PROCID": str(node)})
        for rank, node in ((0, 0), (1, 2), (2, 1))
    ]
    assert found == [distributed.DistEnv(r, 3, 0, 1, "10.0.0.1", 29500, "mpi") for r in range(3)]
    # MPICH's / Intel MPI's mpiexec (Hydra) in a Slurm job: PMI_* for 4 ranks, the proxies' step of 2.
    hydra = {k: v for k, v in MPIRUN_IN_SLURM.items() if not k.startswith("OMPI_")}
    hydra.update(PMI_RANK="3", PMI_SIZE="4", MPI_LOCALRANKID="1", MPI_LOCALNRANKS="2")
    assert distributed.discover(hydra) == distributed.DistEnv(3, 4, 1, 2, "10.0.0.1", 29500, "mpi")


def test_srun_with_an_mpi_plugin_stays_a_slurm_launch():
    """srun --mpi=pmix sets PMIX_RANK / PMIX_SIZE equal to SLURM_PROCID / SLURM_NTASKS: Slurm's discovery."""
    env = {k: v for k, v in MPIRUN_IN_SLURM.items() if not k.startswith("OMPI_")}
    env.update(SLURM_PROCID="3", SLURM_NTASKS="4", SLURM_LOCALID="1", SLURM_STEP_TASKS_PER_NODE="2(x2)")
    env.update(PMIX_RANK="3", PMIX_SIZE="4")
    assert distributed.discover(env) == distributed.DistEnv(3, 4, 1, 2, "10.0.0.1", 29500, "slurm")


def test_mpirun_in_a_real_sbatch_job_numbers_its_ranks(slurm, tmp_path):
    """Fault, on a real Slurm job: `mpirun -np 4` in an sbatch script on 2 nodes x 2 tasks discovered
    ranks 0, 0, 1, 1 of a world of 2 (the daemons' step), each with 1 rank on its node."""
    require_system(
        shutil.which("mpirun") is not None and importlib.util.find_spec("mpi4py") is not None,
        "OpenMPI or mpi4py not installed: bash launch/setup.sh --test",
    )
    script = tmp_path / "mpirun.sbatch"
    # One file a rank: mpirun interleaves the ranks' output lines. TCP between ranks: the two fake nodes
    # are one machine, where Open MPI's shared-memory transport (vader) crashed in mpi4py's bcast.
    script.write_text(
        "#!/bin/bash\n"
        "mpirun --allow-run-as-root --mca btl self,tcp -np 4 python3 -c 'import os; from ngpt_ds.distributed import discover; "
        'd = discover(); open(f"rank-{os.getpid()}", "w").write(f"{d.rank} {d.world_size} {d.local_rank} '
        "{d.local_world_size} {d.source}\")'\n"
    )
    log = tmp_path / "job.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "SLURM_", "OMPI_", "PMI"))}
    env["PYTHONPATH"] = str(REPO)
    job = slurm.submit(
        script, sbatch_args=["--nodes", 2, "--ntasks-per-node", 2, f"--output={log}"], env=env, cwd=tmp_path
    )
    info = slurm.wait(job, 120)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED", (info, text)
    found = sorted(p.read_text() for p in tmp_path.glob("rank-*"))
    assert found == ["0 4 0 2 mpi", "1 4 1 2 mpi", "2 4 0 2 mpi", "3 4 1 2 mpi"], text
