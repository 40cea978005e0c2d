"""IPv6-only hosts, for the rendezvous address ngpt_ds picks itself (mpirun without MASTER_ADDR).

Faults: on a host whose name resolves only to an IPv6 address, rank 0's `gethostbyname` raised
"socket.gaierror: [Errno -9] Address family for hostname not supported" before the job started; and
the port probe bound an AF_INET socket, which refuses any IPv6 address with the same error. Host
"names" here are address literals, which resolve (for real, no resolver mocked) to themselves only.
"""

import importlib.util
import shutil
import socket
import subprocess
import sys

import pytest

from ngpt_ds import distributed, host_address

from conftest import cpu_env, require_system, run_mpirun


def test_a_host_name_that_resolves_only_to_ipv6_is_the_rendezvous_address(monkeypatch):
    monkeypatch.setattr(distributed.socket, "gethostname", lambda: "2001:db8::5")
    assert distributed._routable_address() == "2001:db8::5"


def test_ipv6_loopback_and_link_local_are_skipped_for_hostname_i(monkeypatch):
    listed = subprocess.CompletedProcess([], 0, stdout="2001:db8::7 10.1.2.3\n", stderr="")
    monkeypatch.setattr(host_address.subprocess, "run", lambda *a, **k: listed)
    for name in ("::1", "fe80::1"):
        monkeypatch.setattr(distributed.socket, "gethostname", lambda name=name: name)
        assert distributed._routable_address() == "2001:db8::7"


def test_no_address_at_all_names_master_addr(monkeypatch):
    monkeypatch.setattr(distributed.socket, "gethostname", lambda: "no-such-host.invalid")
    nothing = subprocess.CompletedProcess([], 0, stdout="\n", stderr="")
    monkeypatch.setattr(host_address.subprocess, "run", lambda *a, **k: nothing)
    with pytest.raises(distributed.NgptConfigError, match="set MASTER_ADDR to an address of this host"):
        distributed._routable_address()


def test_the_port_probe_binds_an_ipv6_address():
    require_system(socket.has_ipv6 and _binds("::1"), "this machine has no IPv6 loopback (::1)")
    port = distributed.free_port("::1")
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


NO_ADDRESS_RANK = """
# A rank of a 2-host mpirun job (1 rank a host) on a host whose name resolves nowhere and that
# `hostname -I` lists no address for: rank 0 cannot choose the rendezvous address.
import os, socket, subprocess, sys
os.environ["OMPI_COMM_WORLD_LOCAL_SIZE"] = "1"
def no_address(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
socket.getaddrinfo = no_address
real_run = subprocess.run
def run(cmd, **kwargs):
    if list(cmd[:2]) == ["hostname", "-I"]:
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return real_run(cmd, **kwargs)
subprocess.run = run
from ngpt_ds import distributed
from ngpt_ds.errors import NgptConfigError
try:
    distributed.discover()
except NgptConfigError as err:  # one file a rank: mpirun interleaves the ranks' output
    with open(f"{sys.argv[1]}/rank{os.environ['OMPI_COMM_WORLD_RANK']}", "w") as out:
        out.write(f"error: {err}")
    sys.exit(2)
"""


def test_every_mpirun_rank_stops_when_rank_0_cannot_choose_the_address(tmp_path):
    """Fault: rank 0's new 'cannot tell this host's network address ... set MASTER_ADDR' error (and any
    error of its port probe) was raised on rank 0 alone, before the bcast that gives the other ranks the
    address: they waited there for good, and rank 0 with them in its exit's MPI_Finalize. A real 2-rank
    mpirun job hung (killed after 60 s); now every rank stops with rank 0's reason, exit 2."""
    require_system(
        shutil.which("mpirun") is not None and importlib.util.find_spec("mpi4py") is not None,
        "OpenMPI or mpi4py not installed: bash launch/setup.sh --test",
    )
    script = tmp_path / "rank.py"
    script.write_text(NO_ADDRESS_RANK)
    env = {k: v for k, v in cpu_env().items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    returncode, output = run_mpirun(["-np", "2", sys.executable, script, tmp_path], env, timeout=60)
    assert returncode == 2, output
    reason = "cannot tell this host's network address (its name"
    assert (tmp_path / "rank0").read_text().startswith(f"error: {reason}"), output
    said = (tmp_path / "rank1").read_text()
    assert said.startswith(f"error: rank 0 cannot choose the job's rendezvous address: {reason}"), output
