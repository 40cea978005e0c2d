"""Rank discovery under an MPI launcher that sets no node-local variables (Flux's `flux run`, other PMI or
PMIx launchers), checked against NCCL's device rule on a CPU.

NCCL takes one rank per GPU: two ranks of one node on the same device stop at the first collective
("Duplicate GPU detected"); gloo has no such rule. Every rank drives cuda:LOCAL_RANK
(ngpt_ds.train.builder.init_process_group, DeepSpeed's engine). mpi4py is imitated: a job of 2 nodes x 4.
"""

import sys
import types

import pytest

from ngpt_ds import distributed
from ngpt_ds.errors import NgptConfigError

NODES, PER_NODE = 2, 4


def fake_mpi(rank: int, calls: list) -> types.SimpleNamespace:
    """mpi4py's MPI for world rank `rank`: Split_type(COMM_TYPE_SHARED) gives the ranks of its node."""

    class Node:
        def Get_rank(self):
            return rank % PER_NODE

        def Get_size(self):
            return PER_NODE

        def Free(self):
            calls.append("Free")

    class World:
        @staticmethod
        def Get_rank():
            return rank

        @staticmethod
        def Split_type(split_type, key):
            calls.append(("Split_type", split_type, key))
            return Node()

    return types.SimpleNamespace(MPI=types.SimpleNamespace(COMM_WORLD=World, COMM_TYPE_SHARED="shared"))


def pmi_env(rank: int) -> dict[str, str]:
    """Simple PMI's variables (what `flux run -N2 -n8` sets), with a rendezvous address given."""
    return {"PMI_RANK": str(rank), "PMI_SIZE": str(NODES * PER_NODE), "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}


def test_ranks_of_a_launcher_without_local_variables_drive_one_gpu_each(monkeypatch):
    """Fault: PMI_RANK / PMI_SIZE without any node-local variable: every rank got local rank 0 of a node
    holding the whole job. Before: local (0, 8) on every rank, so all 4 ranks of a node drove cuda:0 and
    NCCL stopped at the first collective ('Duplicate GPU detected'). Now: MPI itself tells the node's ranks
    (COMM_TYPE_SHARED, ordered by rank): local ranks 0-3 of 4 on each node."""
    taken: dict[tuple[int, int], int] = {}
    calls: list = []
    for rank in range(NODES * PER_NODE):
        monkeypatch.setitem(sys.modules, "mpi4py", fake_mpi(rank, calls))
        found = distributed.discover(pmi_env(rank))
        assert (found.rank, found.world_size, found.local_world_size, found.source) == (rank, 8, 4, "mpi")
        device = (rank // PER_NODE, found.local_rank)
        assert device not in taken, f"Duplicate GPU detected : rank {rank} and rank {taken[device]} on cuda:{device[1]}"
        taken[device] = rank
    assert taken == {(r // 4, r % 4): r for r in range(8)}
    assert calls == [item for r in range(8) for item in (("Split_type", "shared", r), "Free")]


def test_without_mpi4py_such_a_launch_is_refused_naming_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails
    with pytest.raises(NgptConfigError) as err:
        distributed.discover(pmi_env(5))
    assert str(err.value) == (
        "started by an MPI launcher that sets PMI_RANK but none of OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID, "
        "MV2_COMM_WORLD_LOCAL_RANK, PMI_LOCAL_RANK, PALS_LOCAL_RANKID: cannot tell which GPU of its node this rank "
        "drives. pip install 'ngpt_ds[mpi]' (or mpi4py), so that MPI tells, or start with mpirun / mpiexec of "
        "Open MPI, MPICH or Intel MPI, srun, or torchrun"
    )


def test_a_single_mpi_rank_asks_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    found = distributed.discover({"PMI_RANK": "0", "PMI_SIZE": "1", "MASTER_ADDR": "10.0.0.1"})
    assert (found.rank, found.world_size, found.local_rank, found.local_world_size) == (0, 1, 0, 1)
