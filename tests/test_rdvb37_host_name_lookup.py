"""An mpirun job without MASTER_ADDR on several hosts: rank 0 looks up its own host name for the address it sends the
other ranks, and that lookup now ends within a bound (ngpt_ds.host_address.HOST_LOOKUP_LIMIT_S): past it rank 0
takes `hostname -I`'s first address, or where it lists none every rank stops with one line naming the lookup and the
fix (set MASTER_ADDR). Real 2-rank mpirun jobs; each rank's
socket.getaddrinfo is replaced, in that rank, by a resolver that answers for this host's name only after a while (a
DNS server that stalls is not something a test can set up without root), and the bound is shortened in the rank.

The fault: `_routable_address` called socket.getaddrinfo(gethostname()), which has no timeout of its own, before rank
0's MPI broadcast of its address; the other ranks wait in that broadcast with no limit. A slow DNS server held every
rank for the resolver's retries, or for good where the resolver never gives up."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys

from conftest import cpu_env, require_system, run_mpirun

RANK = """
import os, socket, sys, time
os.environ.update(OMPI_COMM_WORLD_LOCAL_SIZE="1", OMPI_COMM_WORLD_LOCAL_RANK="0")  # one rank a host, as multi-node
from ngpt_ds import distributed, host_address
from ngpt_ds.errors import NgptConfigError

folder, stall_s, listed = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "listed"
real_getaddrinfo = socket.getaddrinfo
real_run = host_address.subprocess.run


def run(cmd, *args, **kwargs):  # `hostname -I` listing nothing, where the test asks for it
    if not listed and cmd == ["hostname", "-I"]:
        return host_address.subprocess.CompletedProcess(cmd, 0, "", "")
    return real_run(cmd, *args, **kwargs)


host_address.subprocess.run = run


def getaddrinfo(host, *args, **kwargs):  # this rank's resolver: slow for this host's own name only
    if host == socket.gethostname():
        time.sleep(stall_s)
        open(f"{folder}/answered", "w").close()  # the stalled lookup answered (never, where the bound cut it)
    return real_getaddrinfo(host, *args, **kwargs)


def waited() -> str:  # whether the stalled lookup had answered when this rank went on: it had, had it been waited for
    return ("after-the-stall" if os.path.exists(f"{folder}/answered") else "before-the-stall") + " " + bounded[0]


socket.getaddrinfo = getaddrinfo
real_within = host_address.look_up_within
bounded = ["-"]  # how long the bounded lookup waited, on a rank that makes it


def look_up_within(*args, **kwargs):
    began = time.monotonic()
    try:
        return real_within(*args, **kwargs)
    finally:
        bounded[0] = f"{time.monotonic() - began:.2f}"


host_address.look_up_within = look_up_within
host_address.HOST_LOOKUP_LIMIT_S = 3  # an attribute the old code does not have
rank = int(os.environ["OMPI_COMM_WORLD_RANK"])
out = open(f"{folder}/rank{rank}", "w")  # one file a rank: mpirun interleaves the ranks' output
start = time.monotonic()
try:
    dist_env = distributed.discover()
    print(f"{time.monotonic() - start:.1f}", waited(), "address", dist_env.master_addr, file=out, flush=True)
except NgptConfigError as err:
    print(f"{time.monotonic() - start:.1f}", waited(), "error:", err, file=out, flush=True)
    sys.exit(2)
"""

STALL_S = 30


def _discover_with_a_stalled_lookup(tmp_path, listed: str) -> tuple[int, dict, str]:
    """A 2-rank mpirun job, one rank a host, each rank's lookup of this host's name stalling STALL_S s with the bound
    at 3 s: (mpirun's exit status, each rank's seconds and line, mpirun's output). Every rank went on before the
    stalled lookup answered: the bound cut it, whatever the machine's load adds to the 3 s (the ranks had taken 11-13
    s at a load of 18-28, against a bound of 3 + 4 s); the seconds are shown, not bounded."""
    require_system(
        shutil.which("mpirun") is not None and importlib.util.find_spec("mpi4py") is not None,
        "OpenMPI or mpi4py not installed: bash launch/setup.sh --test",
    )
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    env = {k: v for k, v in cpu_env().items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    code, output = run_mpirun(["-np", "2", sys.executable, script, tmp_path, STALL_S, listed], env, timeout=150)
    said = {rank: (tmp_path / f"rank{rank}").read_text().split(" ", 3) for rank in (0, 1)}
    # old code: both ranks 'after-the-stall' (rank 0 waited for its lookup, rank 1 for rank 0's broadcast)
    assert [said[rank][1] for rank in (0, 1)] == ["before-the-stall"] * 2, (said, output[-3000:])
    # rank 0 gave its lookup the whole bound (a lower bound: load only lengthens it); rank 1 looked nothing up
    assert float(said[0][2]) >= 3 and said[1][2] == "-", (said, output[-3000:])
    assert "Traceback" not in output, output[-3000:]
    return code, {rank: (seconds, line) for rank, (seconds, _, _, line) in said.items()}, output


def test_a_slow_lookup_of_rank_0s_host_name_takes_hostname_i_within_the_bound(tmp_path):
    """Fault: rank 0 waited for its own host name's lookup with no bound, and the other ranks for rank 0 in the MPI
    broadcast. Old code: both ranks waited the whole 30 s stall, then went on (each 'after-the-stall'). Now rank 0
    gives the lookup 3 s, then takes the first address `hostname -I` lists (no DNS), with a warning naming MASTER_ADDR, and every rank agrees on it."""
    code, said, output = _discover_with_a_stalled_lookup(tmp_path, "listed")
    first = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True).stdout.split()[0]
    assert code == 0, f"{said} {output[-3000:]}"
    assert said[0][1] == said[1][1] == f"address {first}\n", said
    assert f"the lookup of this host's name {socket.gethostname()!r} did not answer within 3 s" in output


def test_a_slow_lookup_and_no_listed_address_stops_every_rank_with_one_line(tmp_path):
    """The same stall where `hostname -I` lists nothing: rank 0 stops with one line naming the lookup and the fix,
    every other rank with the same line, and mpirun ends (exit 2)."""
    code, said, output = _discover_with_a_stalled_lookup(tmp_path, "none")
    assert code == 2, f"{said} {output[-3000:]}"
    line = (
        f"the lookup of this host's name {socket.gethostname()!r} (for the address the other ranks reach rank 0 at) "
        "did not answer within 3 s, and `hostname -I` lists no address: this host's DNS server is slow or "
        "unreachable. Set MASTER_ADDR to this host's IP address (one the other nodes reach), or fix this host's DNS, "
        "and start the job again"
    )
    assert said[0][1] == f"error: {line}\n", said
    assert said[1][1] == f"error: rank 0 cannot choose the job's rendezvous address: {line}\n", said
