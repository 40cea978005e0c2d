"""Rank discovery inside a Slurm allocation with more than the one srun step of an sbatch script
(ngpt_ds/distributed.py; no Slurm needed: the environments are those Slurm gave, as captured on
tests/system/slurm_cluster.sh).

- salloc with LaunchParameters=use_interactive_step puts the shell in an interactive step of one task,
  whose environment still carries the allocation's SLURM_NTASKS;
- two srun steps of one allocation (srun --overlap, or two in the background) run side by side;
- the port a job derives must not be one the kernel may hand out for outgoing connections.
"""

import pytest

from ngpt_ds import distributed

# What a shell of `salloc -N2 -n4` with LaunchParameters=use_interactive_step sees (Slurm 23.11).
INTERACTIVE_STEP = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_LOCALID": "0",
    "SLURM_NNODES": "2",
    "SLURM_NODEID": "0",
    "SLURM_NTASKS": "4",
    "SLURM_TASKS_PER_NODE": "2(x2)",
    "SLURM_JOB_NODELIST": "ngptds[1-2]",
    "SLURM_PROCID": "0",
    "SLURM_STEP_ID": "4294967290",
    "SLURM_STEP_NUM_NODES": "1",
    "SLURM_STEP_NUM_TASKS": "1",
}

# Rank 1 of `srun -n2` on one node of a two-node allocation.
STEP = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_JOB_NODELIST": "ngptds[1-2]",
    "SLURM_NTASKS": "2",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_STEP_NUM_NODES": "1",
    "SLURM_STEP_TASKS_PER_NODE": "2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "0",
}


def test_salloc_interactive_step_runs_as_one_process(monkeypatch):
    """Fault: a plain `python launch/train.py` in salloc's interactive step read the allocation's
    SLURM_NTASKS=4 as its world size, and rank 0 waited train.dist_timeout_s for 3 ranks never started."""
    monkeypatch.setattr(distributed, "free_port", _no_probe)
    env = distributed.discover(INTERACTIVE_STEP)
    assert env == distributed.DistEnv(0, 1, 0, 1, "127.0.0.1", 0, "slurm", port_chosen_here=True)


def test_srun_inside_the_allocation_still_counts_the_steps_tasks():
    env = distributed.discover({**STEP, "SLURM_STEP_ID": "0"})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (1, 2, 1, 2)
    assert env.master_addr == "127.0.0.1"
    # An older Slurm without SLURM_STEP_NUM_TASKS: SLURM_NTASKS, the step's own there.
    older = {k: v for k, v in STEP.items() if k != "SLURM_STEP_NUM_TASKS"}
    assert distributed.discover({**older, "SLURM_STEP_ID": "0"}).world_size == 2


def test_two_steps_of_one_job_derive_different_ports():
    """Fault: the port came from the job id alone, so the second of two `srun --overlap -n2` steps in one
    allocation listened on the first one's port: EADDRINUSE on its rank 0, or its rank 1 joined the first
    step's rendezvous."""
    ports = [distributed.discover({**STEP, "SLURM_STEP_ID": str(step)}).master_port for step in range(4)]
    assert len(set(ports)) == 4, ports
    assert ports[0] == 20000 + 4242  # step 0: what launch/slurm/*.sbatch export for job 4242
    assert ports[1] == 20000 + (4242 + 5003) % 12000
    # Every rank of one step agrees.
    rank0 = distributed.discover({**STEP, "SLURM_STEP_ID": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"})
    assert rank0.master_port == ports[1]


def _no_probe(addr: str = distributed.LOOPBACK) -> int:
    raise AssertionError(f"discover() probed a free port on {addr} for a one-process run")


def test_one_task_step_takes_a_free_port(monkeypatch):
    """A one-task step (srun -n1) meets nobody: it takes a free port, as a plain `python` run does, not one
    derived from the job that another step of the allocation may hold. The system chooses it when the rendezvous
    listens (train.builder.init_process_group): discover() probes none (port 0). It did, and nothing read the
    probed port since 7cca681 (old code: 'AssertionError: discover() probed a free port on 127.0.0.1 ...')."""
    monkeypatch.setattr(distributed, "free_port", _no_probe)
    one = {**STEP, "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    env = distributed.discover({**one, "SLURM_STEP_ID": "3"})
    assert (env.world_size, env.master_addr, env.master_port, env.port_chosen_here) == (1, "127.0.0.1", 0, True)
    single = distributed.discover({})  # a plain `python launch/train.py`
    assert (single.source, single.master_addr, single.master_port, single.port_chosen_here) == (
        "single",
        "127.0.0.1",
        0,
        True,
    )
    given = distributed.discover({**one, "SLURM_STEP_ID": "3", "MASTER_PORT": "29999"})
    assert (given.master_port, given.port_chosen_here) == (29999, False)


@pytest.mark.parametrize("job", [0, 1, 11999, 12000, 12767, 19999, 39999, 4294967295])
def test_derived_ports_stay_below_linux_ephemeral_ports(job):
    """Fault: 20000 + job id % 20000 reached 39999, into Linux's ephemeral range (32768-60999 by default),
    where the kernel may already have given the port to an outgoing connection of the node."""
    for step in (0, 1, 7, 4294967290):
        port = distributed.discover({**STEP, "SLURM_JOB_ID": str(job), "SLURM_STEP_ID": str(step)}).master_port
        assert 20000 <= port < 32000, (job, step, port)
