"""This host's address as the other nodes of a job see it, for rank 0 of an mpirun job started without MASTER_ADDR
(ngpt_ds.distributed's discovery): its name's lookup bounded in time, `hostname -I` where the name gives none."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import threading
import time

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.rendezvous_failures import _look_up

HOST_LOOKUP_LIMIT_S = 60
"""Fixed, not train.dist_timeout_s (discovery runs before the configs are read): twice the resolver's own give-up time
with its defaults (5 s a try, 2 tries, 3 servers); a lookup still running then may never end (a hung NSS module)."""


def routable_address() -> str:
    """This host's address as other nodes see it: what its name resolves to, IPv4 before IPv6 (as
    `gethostbyname` answered before IPv6-only hosts were handled), loopback and link-local addresses
    skipped. Debian-style /etc/hosts maps the host name to 127.0.1.1, useless to other nodes: then take
    the first address `hostname -I` lists (what DeepSpeed's own MPI discovery uses). On a host whose
    name resolves only to IPv6 `gethostbyname` raised "Address family for hostname not supported".
    Both within HOST_LOOKUP_LIMIT_S: the name's lookup has no timeout of its own, and rank 0 of an mpirun job
    calls this before it broadcasts its address, which the other ranks wait for with no limit."""
    name, deadline = socket.gethostname(), time.monotonic() + HOST_LOOKUP_LIMIT_S
    answer: list = []  # looked up as MASTER_ADDR is (rendezvous_failures._lookup), in a daemon thread left behind
    answered = threading.Event()
    threading.Thread(target=_look_up, args=(name, 0, answer, answered), name="ngpt_ds-host-lookup", daemon=True).start()
    if not answered.wait(HOST_LOOKUP_LIMIT_S):
        raise NgptConfigError(
            f"the lookup of this host's name {name!r} (for the address the other ranks reach rank 0 at) did not "
            f"answer within {HOST_LOOKUP_LIMIT_S} s: this host's DNS server is slow or unreachable. Set MASTER_ADDR "
            "to this host's IP address (one the other nodes reach), or fix this host's DNS, and start the job again"
        )
    infos = [] if isinstance(answer[0], Exception) else answer[0]
    resolved = [str(info[4][0]) for info in sorted(infos, key=lambda info: info[0] != socket.AF_INET)]
    for addr in resolved:
        ip = ipaddress.ip_address(addr.split("%")[0])
        if not (ip.is_loopback or ip.is_link_local):
            return addr
    try:
        wait_s = min(10.0, max(1.0, deadline - time.monotonic()))  # it lists interfaces, no lookup: fast
        listed = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=wait_s).stdout.split()
    except (OSError, subprocess.SubprocessError):
        listed = []
    if listed or resolved:
        return (listed or resolved)[0]
    raise NgptConfigError(
        f"cannot tell this host's network address (its name {name!r} does not resolve and "
        "`hostname -I` lists none): set MASTER_ADDR to an address of this host the other nodes reach"
    )
