"""An mpirun job without MASTER_ADDR / MASTER_PORT: rank 0 chooses the rendezvous port and tells the other ranks
over MPI (mpi4py). Real 2-rank mpirun jobs on gloo.

The fault: rank 0 probed a free port (bind to 0, close), sent it, and only then did torch's store listen on it, in
init_process_group. In between, another process (on a busy node, any process opening a connection) could be given
that port, and the job stopped at startup: 'rank 0 cannot listen for the job's rendezvous on 127.0.0.1:N: another
process on this host holds that port'. The other ranks had been told that port, so a one-process run's retry
(another port) was no way out. Here the other process is played by rank 0 itself: right after discovery it tries
to listen on the port it was given, as another process would at the worst moment."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import sys

import pytest

from ngpt_ds import distributed
from ngpt_ds.errors import NgptConfigError

from conftest import cpu_env, require_system, run_mpirun

RANK = """
import errno, os, socket, sys
import torch.distributed as dist
if sys.argv[2] == "hosts":  # one rank a host, as a multi-node job sees it: rank 0 listens on its routable address
    os.environ.update(OMPI_COMM_WORLD_LOCAL_SIZE="1", OMPI_COMM_WORLD_LOCAL_RANK="0")
from ngpt_ds import distributed
from ngpt_ds.distributed import RendezvousError
from ngpt_ds.train.builder import init_process_group

dist_env = distributed.discover()
again = distributed.discover()  # as the startup shard check does: the same rendezvous, no second broadcast
out = open(f"{sys.argv[1]}/rank{dist_env.rank}", "w")  # one file a rank: mpirun interleaves the ranks' output
if dist_env.rank == 0:
    # Another process, on the port just sent. Bound, not listening: on the old code rank 1's connection is refused
    # and it gives up after train.dist_timeout_s (a listener that never answers held it until the listener closed).
    other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        other.bind((dist_env.master_addr, dist_env.master_port))
        print("taken", file=out, flush=True)
    except OSError as err:
        print("not taken", errno.errorcode[err.errno], file=out, flush=True)
try:
    init_process_group(dist_env, timeout_s=int(sys.argv[3]))
except RendezvousError as err:
    print("refused:", err, file=out, flush=True)
    distributed.exit_process(3, joined=True)
dist.barrier()
print("joined", dist.get_world_size(), dist_env.master_addr, dist_env.master_port, again == dist_env, file=out,
      flush=True)
dist.destroy_process_group()
distributed.exit_process(0, joined=True)
"""


def _mpirun(tmp_path, layout: str, timeout_s: int, **env_vars: str) -> tuple[int, str]:
    require_system(
        shutil.which("mpirun") is not None and importlib.util.find_spec("mpi4py") is not None,
        "OpenMPI or mpi4py not installed: bash launch/setup.sh --test",
    )
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    env = {k: v for k, v in cpu_env(**env_vars).items() if k not in ("MASTER_ADDR", "RANK", "WORLD_SIZE")}
    if "MASTER_PORT" not in env_vars:
        env.pop("MASTER_PORT", None)
    forwarded = [word for name in env_vars for word in ("-x", name)]
    return run_mpirun([*forwarded, "-np", "2", sys.executable, script, tmp_path, layout, timeout_s], env, timeout=150)


def _said(tmp_path, rank: int) -> list[str]:
    path = tmp_path / f"rank{rank}"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("layout", ["one host", "hosts"])
def test_the_port_rank_0_sent_cannot_be_taken_before_the_rendezvous_listens(tmp_path, layout):
    """Fault: another process took the port rank 0 had probed and sent, before torch listened on it, and the job
    stopped at startup. Old code: exit 3, rank 0 'taken', then 'refused: rank 0 cannot listen for the job's
    rendezvous on 127.0.0.1:N: another process on this host holds that port ...'. Now rank 0 listens before it
    sends the port (on every address: the routable one of a multi-node job too), and both ranks meet on it."""
    code, output = _mpirun(tmp_path, layout, timeout_s=20)
    rank0, rank1 = _said(tmp_path, 0), _said(tmp_path, 1)
    assert code == 0, f"{rank0} {rank1} {output[-3000:]}"
    assert rank0[0] == "not taken EADDRINUSE", rank0
    words = rank0[1].split()
    assert words[:2] == ["joined", "2"] and words[4] == "True", rank0
    assert rank1 == [rank0[1]]  # the same address and port on both ranks, and again at a second discovery
    if layout == "one host":
        assert words[2] == "127.0.0.1"
    else:  # this host's routable address, as other nodes would reach it
        assert words[2] != "127.0.0.1" and not words[2].startswith("127."), words


def test_a_taken_master_port_the_user_gave_is_kept_and_refused_in_one_line(tmp_path):
    """MASTER_PORT without MASTER_ADDR: rank 0 chooses the address only; the port is the user's, never changed
    behind the other ranks' backs, and when another process holds it rank 0 says so in one line."""
    # Bound, not listening: rank 1's connection is refused and it gives up after train.dist_timeout_s. (A listener
    # that never answers holds rank 1 in its connection until the listener closes, and rank 0 waits for it in
    # MPI_Finalize: the same with or without this fix.)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        code, output = _mpirun(tmp_path, "one host", timeout_s=5, MASTER_PORT=str(port))
    rank0, rank1 = _said(tmp_path, 0), _said(tmp_path, 1)
    assert code == 3, f"{rank0} {rank1} {output[-3000:]}"
    assert rank0 == [
        "not taken EADDRINUSE",
        f"refused: rank 0 cannot listen for the job's rendezvous on 127.0.0.1:{port}: another process on this host "
        "holds that port (another job?). Set MASTER_PORT to a free port, or stop the other job",
    ]
    assert len(rank1) == 1 and rank1[0].startswith(
        f"refused: rank 1 could not reach rank 0's rendezvous on 127.0.0.1:{port} within 5 s (train.dist_timeout_s)"
    )


# Rank 0 of `mpirun -np 2` on one host, without MASTER_ADDR (Open MPI's variables).
RANK_0 = {
    "OMPI_COMM_WORLD_RANK": "0",
    "OMPI_COMM_WORLD_SIZE": "2",
    "OMPI_COMM_WORLD_LOCAL_RANK": "0",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
}


def test_the_rendezvous_is_broadcast_once_a_process(mpi_rendezvous):
    """Fault: every `discover` broadcast again (the startup shard check runs it, and a rank whose checks failed runs
    it to join the others), so a second call on one rank only paired with nothing (the mpirun test of
    tests/test_port35_mpirun_one_rank_refused.py hung). Old code: sent held two values."""
    first, second = distributed.discover(RANK_0), distributed.discover(RANK_0)
    assert first == second and (first.master_addr, first.master_port) == ("127.0.0.1", 29600)
    assert mpi_rendezvous == [("127.0.0.1", 29600)]


def test_a_master_port_that_is_no_number_stops_every_rank_in_one_line(mpi_rendezvous):
    """MASTER_PORT=x without MASTER_ADDR: rank 0 sends the refusal, so every rank stops with it (old code: a
    ValueError traceback on rank 0, after the broadcast, while the others went on to the rendezvous)."""
    with pytest.raises(NgptConfigError) as refused:
        distributed.discover({**RANK_0, "MASTER_PORT": "x"})
    assert str(refused.value) == "environment variable MASTER_PORT='x' is not an integer"
    assert mpi_rendezvous == ["environment variable MASTER_PORT='x' is not an integer"]


LISTEN = distributed._listen_for_rendezvous  # the real one: mpi_rendezvous imitates it


def test_a_rendezvous_rank_0_cannot_listen_on_stops_every_rank_in_one_line(mpi_rendezvous, monkeypatch):
    """torch's store raises DistNetworkError (a RuntimeError) where it cannot listen (no loopback, no free port):
    uncaught, rank 0 stopped alone before the broadcast and the others waited in it for good
    (tests/test_launch_discovery_ipv6.py has that fault for the address). Now the refusal is what rank 0 sends."""
    import torch.distributed

    def cannot_listen(*args, **kwargs):
        raise torch.distributed.DistNetworkError("The server socket has failed to listen on any local network address.")

    monkeypatch.setattr(distributed, "_listen_for_rendezvous", LISTEN)
    monkeypatch.setattr(torch.distributed, "TCPStore", cannot_listen)
    with pytest.raises(NgptConfigError) as refused:
        distributed.discover(RANK_0)
    reason = (
        "rank 0 cannot listen for the job's rendezvous on this host (The server socket has failed to listen on any "
        "local network address.): set MASTER_ADDR and MASTER_PORT"
    )
    assert str(refused.value) == reason and mpi_rendezvous == [reason]
