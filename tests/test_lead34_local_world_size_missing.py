"""A torch-style launch that sets RANK, WORLD_SIZE and LOCAL_RANK but no LOCAL_WORLD_SIZE (a batch script that
exports RANK=$SLURM_PROCID ... for each task, a home-made launcher) on several nodes.

Fault: rank discovery took the whole job (WORLD_SIZE) for this node's rank count. On 2 nodes of 8 ranks each node's
memory check counted 16 ranks on it (refusing a run that fits), CPU ranks took cores / 16 threads, and each node's
ranks sampled shares 0-7 of 16 in the startup shard check, so shares 8-15 were read by no rank."""

from __future__ import annotations

import pytest

from ngpt_ds import distributed
from ngpt_ds.errors import NgptConfigError


def exported_by_hand(rank: int, **extra: str) -> dict[str, str]:
    """What `export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID MASTER_ADDR=...` gives
    rank `rank` of 2 nodes x 8 ranks (no srun step variables: the script's own tasks)."""
    return {
        "RANK": str(rank),
        "WORLD_SIZE": "16",
        "LOCAL_RANK": str(rank % 8),
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29500",
        **extra,
    }


def _srun_step(rank: int, tasks_per_node: str, node: int, local_rank: int) -> dict[str, str]:
    """What srun sets for rank `rank` of a 16-task step, on node `node` as its `local_rank`-th task."""
    return {
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": str(rank),
        "SLURM_NTASKS": "16",
        "SLURM_STEP_NUM_TASKS": "16",
        "SLURM_STEP_TASKS_PER_NODE": tasks_per_node,
        "SLURM_NODEID": str(node),
        "LOCAL_RANK": str(local_rank),
    }


def test_the_srun_steps_tasks_per_node_give_the_nodes_rank_count():
    """Old code: local_world_size 16."""
    found = distributed.discover(exported_by_hand(9, **_srun_step(9, "8(x2)", node=1, local_rank=1)))
    assert (found.rank, found.world_size, found.local_rank, found.local_world_size) == (9, 16, 1, 8)
    assert (
        distributed.discover(exported_by_hand(13, **_srun_step(13, "12,4", node=1, local_rank=1))).local_world_size == 4
    )


def test_mpis_local_size_gives_the_nodes_rank_count():
    """Old code: local_world_size 16."""
    mpi = {"OMPI_COMM_WORLD_RANK": "9", "OMPI_COMM_WORLD_SIZE": "16", "OMPI_COMM_WORLD_LOCAL_SIZE": "8"}
    assert distributed.discover(exported_by_hand(9, **mpi)).local_world_size == 8


@pytest.mark.parametrize(
    "other",
    [
        # salloc's allocation of 1 task a node, and a home-made launcher starting 8 ranks on each node
        {"SLURM_STEP_ID": "0", "SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_TASKS_PER_NODE": "1(x2)"},
        # an mpirun of 2 processes, each starting 8 ranks itself
        {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "1"},
    ],
)
def test_a_count_of_another_launch_is_not_taken_for_these_ranks(other):
    """Slurm's or MPI's count where RANK and WORLD_SIZE are not theirs (the allocation's, or a launcher's above
    this one) says nothing of this node's ranks: refused, as without any count."""
    with pytest.raises(NgptConfigError, match="without LOCAL_WORLD_SIZE: cannot tell how many"):
        distributed.discover(exported_by_hand(9, **other))
    on_one_machine = distributed.discover(exported_by_hand(9, MASTER_ADDR="127.0.0.1", **other))
    assert on_one_machine.local_world_size == 16  # the loopback: every rank is here, whatever Slurm counted


def test_without_any_count_a_multinode_rendezvous_is_refused_naming_the_variable():
    """Old code: no error, local_world_size 16 on a node of 8 ranks."""
    with pytest.raises(NgptConfigError) as refused:
        distributed.discover(exported_by_hand(9))
    assert str(refused.value) == (
        "launch environment RANK=9 WORLD_SIZE=16 MASTER_ADDR=10.0.0.1 without LOCAL_WORLD_SIZE: cannot tell how "
        "many of the job's ranks share this node (its memory check, its CPU threads and its share of the startup "
        "data check depend on it). Set LOCAL_WORLD_SIZE to this node's rank count, or start with torchrun or "
        "deepspeed, which set it"
    )


@pytest.mark.parametrize("addr", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.1.1"])
def test_a_rendezvous_on_the_loopback_holds_every_rank_on_this_node(addr):
    """Nothing outside the machine reaches the loopback, so the whole job is here (as before)."""
    found = distributed.discover(exported_by_hand(9, MASTER_ADDR=addr))
    assert (found.world_size, found.local_world_size) == (16, 16)
    assert distributed.discover({**exported_by_hand(0), "WORLD_SIZE": "1"}).local_world_size == 1
