"""launch/entrypoint.py refuses, in one line, a torchrun command whose --master_port another program has only bound
(bind without listen: a server set up before it listens), as it refuses one another program listens on.

The fault: the entrypoint's quick check (8d1e438) read the ports in use from /proc/net/tcp, which lists no socket
that is only bound, and handed the command over: torchrun's agent then failed to listen on the port, exit 1 and a
40-line traceback ending in 'torch.distributed.DistNetworkError: The server socket has failed to listen on any local
network address. port: P, useIpv6: false, code: -98, name: EADDRINUSE, message: address already in use'. A port bound
with SO_REUSEADDR, as torch's store binds, holds nothing against torchrun's agent: that command still runs."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from conftest import REPO, cpu_env

RANK = 'import os; print("rank", os.environ["RANK"], "ran")\n'


def _entrypoint_torchrun(tmp_path, port: int) -> subprocess.CompletedProcess:
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    cmd = [sys.executable, REPO / "launch/entrypoint.py", "torchrun", "--nproc_per_node", 1, "--master_port", port]
    return subprocess.run(list(map(str, [*cmd, script])), env=cpu_env(), capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("bound_on", ["127.0.0.1", "0.0.0.0"])
def test_a_master_port_only_bound_by_another_program_is_refused_in_one_line(tmp_path, bound_on):
    """Old code: 'assert 1 == 2' (torchrun's traceback, EADDRINUSE). Now exit 2, one line, no rank started."""
    with socket.socket() as other:  # bound, never listening: in no row of /proc/net/tcp
        other.bind((bound_on, 0))
        port = other.getsockname()[1]
        done = _entrypoint_torchrun(tmp_path, port)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines() == [
        f"error: torchrun's rendezvous port {port} (--master_port) is taken on this host: another job or program "
        "holds it (listens there, or has bound it). Give torchrun a free one with --master_port, or stop the other job"
    ]
    assert done.stdout == ""


def test_a_master_port_bound_with_so_reuseaddr_is_not_refused(tmp_path):
    """Bound with SO_REUSEADDR and not listening, the port does not stop torchrun's agent (which binds it with
    SO_REUSEADDR too): the entrypoint refuses nothing, and the rank runs."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", 0))
        done = _entrypoint_torchrun(tmp_path, other.getsockname()[1])
    assert (done.returncode, done.stdout) == (0, "rank 0 ran\n"), done.stderr[-3000:]
