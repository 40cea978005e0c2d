"""Rank discovery under MPICH and Intel MPI (Hydra's mpiexec): which GPU a rank drives, where rank 0 listens."""

from ngpt_ds import distributed

# Rank 9 of 16 on two nodes of 8 GPUs, as Hydra's mpiexec starts it: PMI_* for the job, MPI_LOCAL* for the node.
HYDRA = {"PMI_RANK": "9", "PMI_SIZE": "16", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "8"}


def test_mpich_and_intel_mpi_ranks_get_their_node_local_rank():
    """Fault: under PMI_RANK without Open MPI's OMPI_COMM_WORLD_LOCAL_* variables every rank got local rank
    0 of a node holding the whole world (here 0 of 16 instead of 1 of 8): all ranks of a node called
    torch.cuda.set_device(0), and DeepSpeed bound NCCL to cuda:0 on each (NCCL: "Duplicate GPU detected")."""
    env = distributed.discover({**HYDRA, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size, env.source) == (9, 16, 1, 8, "mpi")


def test_mpich_multinode_rendezvous_is_not_the_loopback(mpi_rendezvous):
    """Fault: the same job without MASTER_ADDR counted as one node, so rank 0 chose 127.0.0.1 and the
    other node's ranks could never reach it."""
    sent = mpi_rendezvous
    env = distributed.discover({**HYDRA, "PMI_RANK": "0", "MPI_LOCALRANKID": "0"})
    assert (env.master_addr, env.master_port) == ("10.1.2.3", 29600) and sent == [("10.1.2.3", 29600)]
    assert (env.rank, env.local_rank, env.local_world_size) == (0, 0, 8)
