"""A node-local rank outside 0 .. node's rank count - 1, checked against NCCL's device rule on a CPU.

NCCL takes one rank per GPU: two ranks of one node on the same device stop at the first collective
("Duplicate GPU detected"); gloo has no such rule. Each rank calls set_device(LOCAL_RANK)
(ngpt_ds.train.builder.init_process_group), which torch documents as a no-op for a negative index, and
DeepSpeed's engine takes the current device when LOCAL_RANK is negative: such a rank drives cuda:0.
"""

import pytest

from ngpt_ds import distributed
from ngpt_ds.errors import NgptConfigError

BY_HAND = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def nccl_device(local_rank: int) -> int:
    """The CUDA device a rank drives: set_device(n) for n >= 0, else the current device, cuda:0."""
    return local_rank if local_rank >= 0 else 0


def drive(envs: dict[int, dict[str, str]]) -> dict[int, int]:
    """{device: rank} of one node's ranks; raises as NCCL does when two share a device."""
    taken: dict[int, int] = {}
    for rank, env in envs.items():
        device = nccl_device(distributed.discover(env).local_rank)
        if device in taken:
            raise RuntimeError(f"Duplicate GPU detected : rank {rank} and rank {taken[device]} both on cuda:{device}")
        taken[device] = rank
    return taken


def message(local_rank: int, rank: int, source: str) -> str:
    return (
        f"node-local rank {local_rank} of rank {rank} is outside its node's 2 rank(s) ({source} launch environment): "
        "every rank drives the device of its index on its node, 0 to the node's rank count - 1. Set LOCAL_RANK and "
        "LOCAL_WORLD_SIZE to those (unset LOCAL_RANK=-1 left by another script), or start with torchrun or "
        "deepspeed, which set them"
    )


def test_local_rank_minus_one_is_refused_before_the_ranks_share_a_gpu():
    """Fault: LOCAL_RANK=-1 (the 'not distributed' value of many training scripts, left exported) with RANK /
    WORLD_SIZE set for a job of 2 ranks was taken as the rank's device index. Before: discover returned
    local_rank=-1 for both ranks; set_device(-1) did nothing and DeepSpeed's engine took the current device,
    so both ranks drove cuda:0 and NCCL stopped at the first collective (here: 'Duplicate GPU detected : rank
    1 and rank 0 both on cuda:0'), after the model was built. Now: every rank stops at once, naming the bad
    local rank and the fix."""
    envs = {rank: {**BY_HAND, "RANK": str(rank), "LOCAL_RANK": "-1"} for rank in (0, 1)}
    for rank, env in envs.items():
        with pytest.raises(NgptConfigError) as err:
            distributed.discover(env)
        assert str(err.value) == message(-1, rank, "torch")
    with pytest.raises(NgptConfigError):
        drive(envs)


def test_local_rank_past_the_node_size_is_refused():
    """LOCAL_RANK=2 on a node of LOCAL_WORLD_SIZE=2 ranks (LOCAL_RANK set from the global rank) names both."""
    with pytest.raises(NgptConfigError) as err:
        distributed.discover({**BY_HAND, "WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "2"})
    assert str(err.value) == message(2, 2, "torch")


def test_mpi_local_rank_minus_one_is_refused():
    """The same under an MPI launcher's local-rank variable."""
    env = {
        "OMPI_COMM_WORLD_RANK": "1",
        "OMPI_COMM_WORLD_SIZE": "2",
        "OMPI_COMM_WORLD_LOCAL_RANK": "-1",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
    }
    with pytest.raises(NgptConfigError) as err:
        distributed.discover(env)
    assert str(err.value) == message(-1, 1, "mpi")


def test_good_local_ranks_drive_one_gpu_each_and_a_single_rank_keeps_minus_one():
    """Local ranks 0 and 1 drive cuda:0 and cuda:1. A one-rank run with LOCAL_RANK=-1 still starts (its only
    device is the current one, as DeepSpeed's engine takes it), as it did."""
    envs = {rank: {**BY_HAND, "RANK": str(rank), "LOCAL_RANK": str(rank)} for rank in (0, 1)}
    assert drive(envs) == {0: 0, 1: 1}
    found = distributed.discover(
        {**BY_HAND, "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "-1"}
    )
    assert (found.rank, found.world_size, found.local_rank) == (0, 1, -1)
