"""Rank discovery from torch's variables set by hand without LOCAL_RANK, checked against NCCL's device rule.

NCCL takes one rank per GPU: two ranks of one node on the same device stop at the first collective
("Duplicate GPU detected"); gloo has no such rule. Every rank drives cuda:LOCAL_RANK
(ngpt_ds.train.builder.init_process_group, DeepSpeed's engine).
"""

import pytest

from ngpt_ds import distributed
from ngpt_ds.errors import NgptConfigError

BY_HAND = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_ranks_without_local_rank_are_refused_before_they_share_a_gpu():
    """Fault: RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT exported by hand for each rank of a one-node job,
    without LOCAL_RANK (the error for a missing variable lists LOCAL_RANK, but it was read as 0). Before:
    both ranks got local rank 0 and drove cuda:0, and NCCL stopped at the first collective ("Duplicate GPU
    detected"), after the model was built. Now: every rank stops at once, naming LOCAL_RANK and the fix."""
    for rank in (0, 1):
        with pytest.raises(NgptConfigError) as err:
            distributed.discover({**BY_HAND, "RANK": str(rank)})
        assert str(err.value) == (
            f"launch environment RANK={rank} WORLD_SIZE=2 without LOCAL_RANK: cannot tell which device of its "
            "node this rank drives. Set LOCAL_RANK (the rank's index on its node, 0 to the node's rank count - 1) "
            "and LOCAL_WORLD_SIZE, or start with torchrun or deepspeed, which set them"
        )


def test_with_local_rank_each_rank_drives_its_own_gpu():
    devices = {}
    for rank in (0, 1):
        found = distributed.discover({**BY_HAND, "RANK": str(rank), "LOCAL_RANK": str(rank)})
        assert found.local_rank not in devices, f"Duplicate GPU detected: rank {rank} and {devices[found.local_rank]}"
        devices[found.local_rank] = rank
    assert devices == {0: 0, 1: 1}


def test_a_single_rank_needs_no_local_rank():
    """RANK=0 WORLD_SIZE=1 by hand (a one-process run) still starts: its only device is cuda:0."""
    found = distributed.discover({**BY_HAND, "WORLD_SIZE": "1", "RANK": "0"})
    assert (found.rank, found.world_size, found.local_rank, found.local_world_size) == (0, 1, 0, 1)
