"""The port a test hands a job's rank 0 (tests/launching.py free_port) is one no other process can be given meanwhile.

The fault: free_port bound port 0, read the kernel's choice and closed the socket. That port is in the kernel's
ephemeral range, which every other process's connect() and bind(0) draw from; in the seconds until rank 0 (importing
torch first) listened on it, the other pytest-xdist worker's 2-rank jobs opened dozens of connections, and one that
got the port made rank 0 stop with 'cannot listen for the job's rendezvous on 127.0.0.1:PORT: another process on
this host holds that port' (a CI failure of a test that passes alone).
"""

import datetime
import socket
from pathlib import Path

import launching
import pytest
from launching import free_port
from torch.distributed import TCPStore


def test_an_outgoing_connection_on_the_port_makes_the_rendezvous_listen_fail():
    """Why a port the kernel hands out is unsafe: a connection that got it as its own port blocks the listen."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as client:  # as a gloo pair of another job connects
            taken = client.getsockname()[1]
            with pytest.raises(RuntimeError, match="EADDRINUSE"):
                TCPStore("127.0.0.1", taken, 2, True, timeout=datetime.timedelta(seconds=5))


def test_free_port_is_below_the_range_the_kernel_hands_out(monkeypatch):
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    if low < launching.PORTS.start + 1000:  # a machine whose range starts lower: the draw as on a default Linux
        low = 32768
        monkeypatch.setattr(launching, "_ephemeral_low", lambda: low)
    ports = [free_port() for _ in range(50)]
    assert [port for port in ports if port >= low] == []
    assert len(set(ports)) == 50, "a port given twice"
    for port in ports:  # free now: a listener gets it
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_the_xdist_workers_draw_from_separate_ports(monkeypatch):
    monkeypatch.setattr(launching, "_ephemeral_low", lambda: 32768)  # Linux's default, whatever this machine's
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    drawn = {}
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        drawn[worker] = [free_port() for _ in range(20)]
    middle = launching.PORTS.start + len(launching.PORTS) // 2
    assert max(drawn["gw0"]) < middle <= min(drawn["gw1"]), drawn


def test_a_port_someone_listens_on_is_not_given(monkeypatch):
    monkeypatch.setattr(launching, "_ephemeral_low", lambda: 32768)
    monkeypatch.setattr(launching, "PORTS", range(15000, 16000))
    monkeypatch.setattr(launching, "_given", set())
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    monkeypatch.setattr(launching._random, "randrange", lambda n: 0)  # the first port it tries: the one held
    with socket.socket() as other_job:
        other_job.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other_job.bind(("127.0.0.1", 15000))
        other_job.listen()
        assert 15000 < free_port() < 16000  # the next free one
