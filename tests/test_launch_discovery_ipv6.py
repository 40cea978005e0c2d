"""IPv6-only hosts, for the rendezvous address ngpt_ds picks itself (mpirun without MASTER_ADDR).

Faults: on a host whose name resolves only to an IPv6 address, rank 0's `gethostbyname` raised
"socket.gaierror: [Errno -9] Address family for hostname not supported" before the job started; and
the port probe bound an AF_INET socket, which refuses any IPv6 address with the same error. Host
"names" here are address literals, which resolve (for real, no resolver mocked) to themselves only.
"""

import socket
import subprocess

import pytest

from ngpt_ds import distributed

from conftest import require_system


def test_a_host_name_that_resolves_only_to_ipv6_is_the_rendezvous_address(monkeypatch):
    monkeypatch.setattr(distributed.socket, "gethostname", lambda: "2001:db8::5")
    assert distributed._routable_address() == "2001:db8::5"


def test_ipv6_loopback_and_link_local_are_skipped_for_hostname_i(monkeypatch):
    listed = subprocess.CompletedProcess([], 0, stdout="2001:db8::7 10.1.2.3\n", stderr="")
    monkeypatch.setattr(distributed.subprocess, "run", lambda *a, **k: listed)
    for name in ("::1", "fe80::1"):
        monkeypatch.setattr(distributed.socket, "gethostname", lambda name=name: name)
        assert distributed._routable_address() == "2001:db8::7"


def test_no_address_at_all_names_master_addr(monkeypatch):
    monkeypatch.setattr(distributed.socket, "gethostname", lambda: "no-such-host.invalid")
    nothing = subprocess.CompletedProcess([], 0, stdout="\n", stderr="")
    monkeypatch.setattr(distributed.subprocess, "run", lambda *a, **k: nothing)
    with pytest.raises(distributed.NgptConfigError, match="set MASTER_ADDR to an address of this host"):
        distributed._routable_address()


def test_the_port_probe_binds_an_ipv6_address():
    require_system(socket.has_ipv6 and _binds("::1"), "this machine has no IPv6 loopback (::1)")
    port = distributed._free_port("::1")
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as listener:
        listener.bind(("::1", port))  # free on ::1, where the rendezvous will listen
    assert 0 < port < 65536


def test_a_rendezvous_failure_names_an_ipv6_master_in_brackets():
    env = distributed.DistEnv(1, 2, 1, 2, "2001:db8::5", 29500, "mpi")
    err = distributed.rendezvous_failure(RuntimeError("timed out"), env, 30)
    assert "rendezvous on [2001:db8::5]:29500 within 30 s" in str(err)


def _binds(addr: str) -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind((addr, 0))
    except OSError:
        return False
    return True
