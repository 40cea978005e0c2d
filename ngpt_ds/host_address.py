"""This host's address as the other nodes of a job see it, for rank 0 of an mpirun job started without MASTER_ADDR
(ngpt_ds.distributed's discovery): its name's lookup bounded in time, `hostname -I` where the name gives none."""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import subprocess
import time

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.limits import TRAIN, limit_failure, task_limit
from ngpt_ds.name_lookup import look_up_within

logger = logging.getLogger(__name__)

_THREAD = "can't start new thread"
_THREAD_EAGAIN = os.strerror(errno.EAGAIN)

HOST_LOOKUP_LIMIT_S = 60
"""Fixed, not train.dist_timeout_s (discovery runs before the configs are read): twice the resolver's own give-up time
with its defaults (5 s a try, 2 tries, 3 servers); a lookup still running then may never end (a hung NSS module)."""


def routable_address() -> str:
    """This host's address as other nodes see it: what its name resolves to, IPv4 before IPv6 (as
    `gethostbyname` answered before IPv6-only hosts were handled), loopback and link-local addresses
    skipped. Debian-style /etc/hosts maps the host name to 127.0.1.1, useless to other nodes: then take
    the first address `hostname -I` lists (what DeepSpeed's own MPI discovery uses). On a host whose
    name resolves only to IPv6 `gethostbyname` raised "Address family for hostname not supported".
    The name's lookup gets HOST_LOOKUP_LIMIT_S (it has no timeout of its own, and rank 0 of an mpirun job calls this
    before it broadcasts its address, which the other ranks wait for with no limit); past it, `hostname -I`'s first
    address, with a warning, or where it lists none an error every rank is told."""
    name, deadline = socket.gethostname(), time.monotonic() + HOST_LOOKUP_LIMIT_S
    try:
        found = look_up_within(name, 0, HOST_LOOKUP_LIMIT_S, "ngpt_ds-host-lookup")  # as MASTER_ADDR is looked up
    except RuntimeError as err:
        raise _thread_limit(err, name) from None
    timed_out = found is None
    if timed_out:  # `hostname -I` lists this host's addresses without DNS: a hung resolver need not stop the job
        logger.warning(
            "the lookup of this host's name %r did not answer within %d s (a slow or unreachable DNS server): "
            "rank 0's address is taken from `hostname -I`; set MASTER_ADDR to choose it",
            name,
            HOST_LOOKUP_LIMIT_S,
        )
    infos = [] if found is None or isinstance(found, Exception) else found
    resolved = [str(info[4][0]) for info in sorted(infos, key=lambda info: info[0] != socket.AF_INET)]
    for addr in resolved:
        ip = ipaddress.ip_address(addr.split("%")[0])
        if not (ip.is_loopback or ip.is_link_local):
            return addr
    try:
        wait_s = min(10.0, max(5.0, deadline - time.monotonic()))  # it lists interfaces, no lookup: fast
        listed = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=wait_s).stdout.split()
    except (OSError, subprocess.SubprocessError):
        listed = []
    if listed or resolved:
        return (listed or resolved)[0]
    if timed_out:
        raise NgptConfigError(
            f"the lookup of this host's name {name!r} (for the address the other ranks reach rank 0 at) did not "
            f"answer within {HOST_LOOKUP_LIMIT_S} s, and `hostname -I` lists no address: this host's DNS server is "
            "slow or unreachable. Set MASTER_ADDR to this host's IP address (one the other nodes reach), or fix this "
            "host's DNS, and start the job again"
        )
    raise NgptConfigError(
        f"cannot tell this host's network address (its name {name!r} does not resolve and "
        "`hostname -I` lists none): set MASTER_ADDR to an address of this host the other nodes reach"
    )


def _thread_limit(err: RuntimeError, name: str) -> BaseException:
    """The one line for the lookup's thread that could not start (a low `ulimit -u`, or a `ulimit -s` / `ulimit -v`
    ngpt_ds.limits names), as an NgptConfigError rank 0 broadcasts to every rank (ngpt_ds.distributed._mpi_master);
    `err` itself where no limit explains it. Raised as it was, rank 0 ended on a traceback and every other rank
    waited in the broadcast of rank 0's address, and rank 0 with them in MPI_Finalize: the job hung."""
    limit = task_limit(TRAIN.command, "start the job again")
    if limit is not None and (_THREAD in str(err) or str(err).strip() == _THREAD_EAGAIN):
        said, fix = limit
        return NgptConfigError(
            f"rank 0 could not start a thread to look up this host's name {name!r} (for the address the other ranks "
            f"reach rank 0 at): {said}, and a rank starts dozens of threads (torch's store, gloo, its checks). {fix}"
        )
    return limit_failure(err, TRAIN) or err
