"""launch/entrypoint.py refuses a torchrun command whose rendezvous port (--master_port) another process holds on this
host, in one line, before torchrun starts.

The fault: torchrun's agent listens on --master_port itself, before any rank starts (static rendezvous, node rank
0), so no rank of ours could say why: the command ended with exit 1 and torchrun's 40-line traceback ending in
'torch.distributed.DistNetworkError: The server socket has failed to listen on any local network address. port: P,
useIpv6: false, code: -98, name: EADDRINUSE, message: address already in use'."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from conftest import REPO, cpu_env, free_port

RANK = 'import os; print("rank", os.environ["RANK"], "ran")\n'


def entrypoint(tmp_path, *torchrun_args) -> subprocess.CompletedProcess:
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    cmd = [sys.executable, REPO / "launch/entrypoint.py", *torchrun_args, script]
    return subprocess.run(list(map(str, cmd)), env=cpu_env(), capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("command", [["torchrun"], [sys.executable, "-m", "torch.distributed.run"]])
@pytest.mark.parametrize("held_on", ["127.0.0.1", "0.0.0.0"])
def test_a_torchrun_master_port_held_by_another_program_is_refused_in_one_line(tmp_path, command, held_on):
    """Old code: exit 1 and torchrun's traceback ('assert 1 == 2'). Now exit 2, one line, no rank started."""
    with socket.socket() as other:  # another job's listener
        other.bind((held_on, 0))
        other.listen()
        port = other.getsockname()[1]
        done = entrypoint(tmp_path, *command, "--nproc_per_node", 1, "--master_port", port)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines() == [
        f"error: torchrun's rendezvous port {port} (--master_port) is taken on this host: another job or program "
        "holds it (listens there, or has bound it). Give torchrun a free one with --master_port, or stop the other job"
    ]
    assert done.stdout == ""


def test_torchrun_on_a_free_port_or_standalone_runs_its_rank(tmp_path):
    """The check refuses nothing else: a free --master_port, and --standalone (torchrun picks its own port) with the
    --master_port held (no agent listens on it then)."""
    done = entrypoint(tmp_path, "torchrun", "--nproc-per-node=1", f"--master-port={free_port()}")
    assert (done.returncode, done.stdout) == (0, "rank 0 ran\n"), done.stderr[-3000:]
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        done = entrypoint(
            tmp_path, "torchrun", "--standalone", "--nproc_per_node", 1, "--master_port", other.getsockname()[1]
        )
    assert (done.returncode, done.stdout) == (0, "rank 0 ran\n"), done.stderr[-3000:]
