"""Review of 10c6b59 / 00da62d (discover without LOCAL_WORLD_SIZE): two edges of `_ranks_here_unnamed`.

Fault 1: a launch with Slurm's step variables but neither task count (SLURM_STEP_ID and SLURM_PROCID exported, no
SLURM_NTASKS nor SLURM_STEP_NUM_TASKS) stopped discovery on a bare `KeyError: 'SLURM_NTASKS'` traceback, where
10c6b59 (which asked for SLURM_NTASKS first) gave the one-line refusal naming LOCAL_WORLD_SIZE.

Fault 2: a rendezvous address no other node can reach, spelled otherwise than `localhost` or a loopback IP, was
refused as a possible multi-node job: `LOCALHOST` (host names are case-insensitive) and the unspecified address
0.0.0.0 / `::` (a rank connecting to it reaches its own host). Before 10c6b59 these ran with every rank on the node,
which is the only place the ranks can be."""

from __future__ import annotations

import pytest

from ngpt_ds import distributed
from ngpt_ds.errors import NgptConfigError


def _launch(master_addr: str, **extra: str) -> dict[str, str]:
    """Rank 1 of 4 started by a home-made launcher that sets no LOCAL_WORLD_SIZE."""
    return {
        "RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": "29500",
    } | extra


def test_slurm_step_variables_without_a_task_count_are_refused_in_one_line():
    """Old code: KeyError: 'SLURM_NTASKS'."""
    with pytest.raises(NgptConfigError) as refused:
        distributed.discover(_launch("10.0.0.1", SLURM_STEP_ID="0", SLURM_PROCID="1"))
    assert str(refused.value).startswith(
        "launch environment RANK=1 WORLD_SIZE=4 MASTER_ADDR=10.0.0.1 without LOCAL_WORLD_SIZE: cannot tell how many "
        "of the job's ranks share this node"
    )


@pytest.mark.parametrize("addr", ["LOCALHOST", "Localhost", "0.0.0.0", "::", "[::]"])
def test_an_address_only_this_host_reaches_holds_the_whole_job(addr):
    """Old code: NgptConfigError 'launch environment RANK=1 WORLD_SIZE=4 MASTER_ADDR=0.0.0.0 without
    LOCAL_WORLD_SIZE: cannot tell how many of the job's ranks share this node ...'."""
    found = distributed.discover(_launch(addr))
    assert (found.rank, found.world_size, found.local_rank, found.local_world_size) == (1, 4, 1, 4)


def test_a_host_name_is_still_refused():
    """A name (even this host's) may be rank 0's node of several: no count, so still the refusal."""
    with pytest.raises(NgptConfigError, match="MASTER_ADDR=node-a without LOCAL_WORLD_SIZE"):
        distributed.discover(_launch("node-a"))
