"""Rank discovery under HPE Cray EX's mpiexec (PALS with Cray PMI), checked against NCCL's device rule on a CPU.

NCCL takes one rank per GPU: ranks of one node that drive the same device stop at the first collective
("Duplicate GPU detected"). gloo has no such rule, so `nccl_devices` below applies it: every rank drives
cuda:LOCAL_RANK (ngpt_ds.train.builder.init_process_group, DeepSpeed's engine), and no two ranks of a
node may share one.
"""

import pytest

from ngpt_ds import distributed

NODES, PER_NODE = 2, 4


def pals_env(rank: int) -> dict[str, str]:
    """What PALS' mpiexec (Cray PMI) sets for global rank `rank` of `mpiexec -n 8 --ppn 4`."""
    node, local = divmod(rank, PER_NODE)
    return {
        "PMI_RANK": str(rank),
        "PMI_SIZE": str(NODES * PER_NODE),
        "PMI_LOCAL_RANK": str(local),
        "PMI_LOCAL_SIZE": str(PER_NODE),
        "PALS_RANKID": str(rank),
        "PALS_LOCAL_RANKID": str(local),
        "PALS_LOCAL_SIZE": str(PER_NODE),
        "PALS_NODEID": str(node),
    }


def nccl_devices(envs: dict[int, dict[str, str]]) -> dict[tuple[str, int], int]:
    """NCCL's rule on a CPU: the device of each rank, keyed (node, device index); raises, as NCCL does,
    for two ranks of one node on one device."""
    taken: dict[tuple[str, int], int] = {}
    for rank, env in envs.items():
        found = distributed.discover(env)
        key = (env["PALS_NODEID"], found.local_rank)
        if key in taken:
            raise RuntimeError(f"Duplicate GPU detected : rank {rank} and rank {taken[key]} both on cuda:{key[1]}")
        taken[key] = rank
    return taken


def test_cray_pals_ranks_drive_one_gpu_each():
    """Fault: under PALS' mpiexec (PMI_RANK / PMI_SIZE with Cray PMI's PMI_LOCAL_RANK / PMI_LOCAL_SIZE and
    PALS_LOCAL_*, none of the local variables rank discovery knew) every rank got local rank 0 of a node
    holding the whole job. Before: every rank of a node drove cuda:0, and NCCL stopped at the first
    collective (here: 'Duplicate GPU detected : rank 1 and rank 0 both on cuda:0'). Now: local ranks 0-3
    on each node, 4 ranks a node."""
    envs = {rank: {**pals_env(rank), "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"} for rank in range(8)}
    devices = nccl_devices(envs)
    assert devices == {(str(r // 4), r % 4): r for r in range(8)}
    found = distributed.discover(envs[5])
    assert (found.rank, found.world_size, found.local_rank, found.local_world_size) == (5, 8, 1, 4)


@pytest.mark.parametrize("prefix", ["PMI_LOCAL", "PALS_LOCAL"])
def test_either_cray_variable_gives_the_local_rank(prefix):
    """PALS without Cray PMI's local variables (PALS_LOCAL_RANKID / PALS_LOCAL_SIZE only), and the other way round."""
    env = pals_env(6)
    drop = "PALS_LOCAL" if prefix == "PMI_LOCAL" else "PMI_LOCAL"
    env = {k: v for k, v in env.items() if not k.startswith(drop)}
    env.update(MASTER_ADDR="10.0.0.1", MASTER_PORT="29500")
    found = distributed.discover(env)
    assert (found.local_rank, found.local_world_size) == (2, 4)


def test_cray_pals_multinode_rendezvous_is_not_the_loopback(mpi_rendezvous):
    """Fault: the same job without MASTER_ADDR counted as one node (local size = the job's 8), so rank 0
    chose 127.0.0.1 and the second node's ranks waited train.dist_timeout_s for an address they cannot
    reach. Before: ('127.0.0.1', port). Now: this host's routable address."""
    sent = mpi_rendezvous
    found = distributed.discover(pals_env(0))
    assert (found.master_addr, found.master_port) == ("10.1.2.3", 29600) and sent == [("10.1.2.3", 29600)]
    assert (found.rank, found.local_rank, found.local_world_size, found.source) == (0, 0, 4, "mpi")
