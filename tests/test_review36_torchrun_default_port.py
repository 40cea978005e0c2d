"""launch/entrypoint.py's torchrun port check (769e379) on a torchrun command without --master_port, and with
--rdzv_endpoint.

Fault: torchrun's parser leaves --master_port None where it is not given (torch 2.13: one node then uses a c10d store
on a free port), and the check bound that None: `launch/entrypoint.py torchrun --nproc_per_node 1 rank.py`, the
ordinary single-node command, ended before torchrun started in "TypeError: 'NoneType' object cannot be interpreted as
an integer" (a traceback, exit 1). And with the static backend's --rdzv_endpoint HOST:PORT the agent listens on
that port, not on --master_port, which the check probed instead. Now no port is probed where torchrun takes a free
one, and the endpoint's port is the one probed and named."""

from __future__ import annotations

import socket

from test_rdv36_torchrun_port import entrypoint

from conftest import free_port


def test_torchrun_without_master_port_runs_its_rank(tmp_path):
    """Old code: exit 1, its stderr (the assertion's message) a traceback ending in the TypeError above."""
    done = entrypoint(tmp_path, "torchrun", "--nproc_per_node", 1)
    assert (done.returncode, done.stdout) == (0, "rank 0 ran\n"), done.stderr[-3000:]


def test_the_static_rdzv_endpoints_port_is_the_one_checked(tmp_path):
    """A held endpoint port is refused in one line naming it; a free one runs. Old code: the TypeError both times."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        done = entrypoint(tmp_path, "torchrun", "--nproc_per_node", 1, "--rdzv_endpoint", f"127.0.0.1:{port}")
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines() == [
        f"error: torchrun's rendezvous port {port} (--rdzv_endpoint) is taken on this host: another job or program "
        "holds it (listens there, or has bound it). Give torchrun a free one with --rdzv_endpoint, or stop the other job"
    ]
    done = entrypoint(tmp_path, "torchrun", "--nproc_per_node", 1, "--rdzv_endpoint", f"127.0.0.1:{free_port()}")
    assert (done.returncode, done.stdout) == (0, "rank 0 ran\n"), done.stderr[-3000:]
