"""What a rank says when the job's ranks do not meet to start the process group: one line for torch's rendezvous
errors (`rendezvous_failure`), and a bound on the wait where torch's own timeout does not hold
(`bounded_rendezvous`).

The bound: torch's store client gives up after train.dist_timeout_s when nothing listens on MASTER_PORT, but not
when some other program listens there and never answers: the connection is accepted (by the kernel, on that
program's behalf), and the client then waits for a reply for good. Rank 0, which could not listen on the port,
says so in one line and exits; under mpirun it then waits for the other ranks in MPI_Finalize, and under srun the
step waits for them: the job stayed until the other program closed its port (81 s with a 30 s timeout, or never).
A client rank now checks that the port answers a store's ping within `answer_limit_s` once it accepts a connection.
The lookup of MASTER_ADDR counts inside train.dist_timeout_s too (`_lookup`): it has no timeout of its own; torch's
rendezvous is then given the address it was looked up as (`_master_addr`), so that it looks up nothing outside it.
A rank that cannot start a thread there (`ulimit -u`) says so, and tells the other ranks through rank 0's store
(ngpt_ds.rendezvous_peers), which they ask every second or so: they stop with its line, not at train.dist_timeout_s.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING

from ngpt_ds import name_lookup
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.rendezvous_peers import (
    Listener,
    connect_first,
    end_process,
    hear,
    task_limit_clause,
    tell_the_job,
    thread_failed,
    thread_limit_line,
)

if TYPE_CHECKING:  # ngpt_ds.distributed re-exports this module's errors
    from ngpt_ds.distributed import DistEnv

GRACE_S = 10
"""The margin past the backstop of `limit_s`, and the shortest wait for a port's first answer (`answer_limit_s`)."""

ANSWER_LIMIT_MAX_S = 60
"""The longest a rank's store client waits for the first answer of a rendezvous port that accepted its connection.
A real store answers one client within milliseconds, but rank 0's store serves every rank's connection in turn, and
at thousands of ranks the last ones queue: a bound of a few seconds would end a healthy large job."""


def answer_limit_s(timeout_s: int) -> int:
    """How long a rank waits for the first answer of a port that accepted its connection: a minute at the default
    train.dist_timeout_s (600 s), never more than the timeout, never less than GRACE_S."""
    return max(GRACE_S, min(timeout_s, ANSWER_LIMIT_MAX_S))


EXIT_CODE = 1
"""The exit status of a rank that never joined (ngpt_ds.cli.train's for a RendezvousError)."""


def _where(dist_env: DistEnv) -> str:
    host = dist_env.master_addr
    return f"[{host}]:{dist_env.master_port}" if ":" in host else f"{host}:{dist_env.master_port}"  # IPv6: [::1]:29500


class RendezvousError(RuntimeError):
    """The ranks of a job did not all meet to start the process group (`rendezvous_failure` says why)."""


def rendezvous_failure(err: Exception, dist_env: DistEnv, timeout_s: int) -> RendezvousError:
    """One message, naming the address, the wait and what to check, for torch's rendezvous errors.

    Without it a rank whose peer crashed or was never started (a node that failed its start, an import
    error on one host) waited train.dist_timeout_s and then died in a traceback of some 20 frames ending
    in "DistStoreError: Timed out after 601 seconds waiting for clients. 1/2 clients joined" (rank 0),
    or "DistNetworkError: The client socket has timed out ... while trying to connect to" (the others).
    """
    text = str(err)
    where = _where(dist_env)
    if "EADDRINUSE" in text or "address already in use" in text:
        return RendezvousError(
            f"rank {dist_env.rank} cannot listen for the job's rendezvous on {where}: another process on this "
            "host holds that port (another job?). Set MASTER_PORT to a free port, or stop the other job"
        )
    joined = re.search(r"(\d+)/(\d+) clients joined", text)
    if joined:
        missing = dist_env.world_size - int(joined[1])
        return RendezvousError(
            f"rank {dist_env.rank} waited {timeout_s} s (train.dist_timeout_s) on {where} for the job's other "
            f"ranks, and {missing} of {dist_env.world_size} never arrived: they crashed or were not started "
            "(read their logs), or cannot reach this address (MASTER_ADDR, a firewall). Fix that and start "
            "the job again; it resumes from its newest checkpoint"
        )
    first_line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    if dist_env.rank != 0:
        return RendezvousError(
            f"rank {dist_env.rank} could not reach rank 0's rendezvous on {where} within {timeout_s} s "
            "(train.dist_timeout_s): rank 0 crashed or was not started (read its log), or MASTER_ADDR / "
            "MASTER_PORT is wrong or unreachable from this host. Fix that and start the job again; it "
            f"resumes from its newest checkpoint. ({first_line})"
        )
    return RendezvousError(f"rank 0: the job's rendezvous on {where} failed: {first_line}")


def limit_s(timeout_s: int) -> int:
    """The backstop on the whole rendezvous (`bounded_rendezvous`), which torch's own timeouts end sooner: a client's
    connection is tried for up to train.dist_timeout_s and then once more (TCPStore retries a try that failed at its
    deadline: 12 s for a 5 s timeout, nothing listening), and rank 0 waits one timeout for the last rank."""
    return 2 * timeout_s + GRACE_S


def silent_port_message(dist_env: DistEnv, timeout_s: int) -> str:
    return (
        f"rank {dist_env.rank}: the job's rendezvous port {_where(dist_env)} accepted the connection and did not "
        f"answer within {answer_limit_s(timeout_s)} s: another program listens on that port (rank 0 then could not), or rank 0 hangs. "
        "Set MASTER_PORT to a free port, or stop that program, and start the job again; it resumes from its newest "
        "checkpoint"
    )


def message(dist_env: DistEnv, timeout_s: int) -> str:
    return (
        f"rank {dist_env.rank} waited {limit_s(timeout_s)} s (twice train.dist_timeout_s, {timeout_s} s, and "
        f"{GRACE_S}) for the job's rendezvous on {_where(dist_env)}, which neither met nor failed: a rank hangs "
        f"(read the ranks' logs){task_limit_clause()}. Start the job again; it resumes from its newest checkpoint"
    )


def _store_client(dist_env: DistEnv) -> bool:
    """Whether torch's env:// rendezvous makes this rank a client of the job's store: every rank but rank 0, which
    serves it, or every rank where torchrun's agent serves it (torch's _create_c10d_store)."""
    return dist_env.rank != 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)


def _lookup(dist_env: DistEnv, timeout_s: int, deadline: float) -> list[tuple]:
    """MASTER_ADDR's addresses (socket.getaddrinfo), looked up within the time left of train.dist_timeout_s.

    The lookup runs in a thread of its own (ngpt_ds.name_lookup) because it has no timeout of its own: a slow or dead
    DNS server held a rank for the resolver's retries (some 5 s a try, times its attempts and servers) before the
    wait for the port began, and for good where the resolver never gives up. A name that does not resolve is looked
    up again until the deadline: where rank 0's host gets its name only once it runs (a Kubernetes service), a rank
    that starts first would otherwise stop. Raises RendezvousError (one line naming MASTER_ADDR and the fix) at the
    deadline, and RuntimeError where the lookup's thread cannot start (`bounded_rendezvous` says why)."""
    while True:
        found = name_lookup.look_up_within(
            dist_env.master_addr, dist_env.master_port, deadline - time.monotonic(), "ngpt_ds-master-addr-lookup"
        )
        if found is None:  # the thread is left behind, a daemon
            raise RendezvousError(slow_lookup_message(dist_env, timeout_s))
        if not isinstance(found, Exception):
            return found
        if time.monotonic() + LOOKUP_RETRY_S >= deadline:  # no time for another answer
            raise RendezvousError(unresolved_message(dist_env, timeout_s, found))
        time.sleep(LOOKUP_RETRY_S)


LOOKUP_RETRY_S = 1.0
"""How often a MASTER_ADDR that does not resolve is looked up again (one query a second a rank, at most)."""


def slow_lookup_message(dist_env: DistEnv, timeout_s: int) -> str:
    return (
        f"rank {dist_env.rank}: the lookup of MASTER_ADDR {dist_env.master_addr} (rank 0's host) did not answer "
        f"within {timeout_s} s (train.dist_timeout_s): this host's DNS server is slow or unreachable. Set MASTER_ADDR "
        "to rank 0's IP address, or fix this host's DNS, and start the job again; it resumes from its newest checkpoint"
    )


def unresolved_message(dist_env: DistEnv, timeout_s: int, err: Exception) -> str:
    return (
        f"rank {dist_env.rank}: MASTER_ADDR {dist_env.master_addr} (rank 0's host) did not resolve on this host within "
        f"{timeout_s} s (train.dist_timeout_s): {str(err) or type(err).__name__}. Set MASTER_ADDR to rank 0's IP address or a name this host "
        "resolves (a typo? this host's DNS?), and start the job again; it resumes from its newest checkpoint"
    )


def _resolved_to(dist_env: DistEnv, addresses: list[tuple]) -> str:
    """Where MASTER_ADDR is a name: what it resolved to on this host. A host whose lookup of rank 0's name gives
    another address than rank 0 has (a stale /etc/hosts line, another DNS view) got the line of a rank 0 that never
    started, naming only the name, which looks right on rank 0's own host."""
    found = list(dict.fromkeys(str(address[4][0]) for address in addresses))
    if found == [dist_env.master_addr.strip("[]")]:  # an address, not a name
        return ""
    return f"MASTER_ADDR {dist_env.master_addr} is {' or '.join(found)} on this host; "


def _check_the_port_answers(dist_env: DistEnv, timeout_s: int, addresses: list[tuple], deadline: float) -> str:
    """Wait (until `deadline`, train.dist_timeout_s from the start of MASTER_ADDR's lookup) until rank 0's rendezvous
    port accepts a connection, then let a store client of torch's own connect and ping it within `answer_limit_s`: a
    program that listens on the port and never answers is found in a minute at most, not after the whole
    rendezvous's backstop of twice the timeout (20 min by default).

    Split so because torch's client has no timeout once connected (its ping then waits for good), and one of its
    connection tries may start just before its deadline and last a whole timeout more: bounding torch's client alone
    at one timeout would cut off a rank 0 that starts late but within the timeout. The connection tried here is
    closed at once (the store drops it). Both connect to the address looked up (`addresses`), not to MASTER_ADDR:
    a slow lookup, made again, would count against the minute for the store's answer."""
    from torch.distributed import DistNetworkError, TCPStore

    while True:
        try:
            wait_s = min(5.0, max(0.5, deadline - time.monotonic()))  # an address that drops packets: not past T
            address = connect_first(addresses, wait_s)
            break
        except OSError as err:  # nothing listens yet (rank 0 starts later) or unreachable
            if time.monotonic() >= deadline:  # torch's error type: the caller's rendezvous_failure says it in a line
                resolved = _resolved_to(dist_env, addresses)
                there = "there " if resolved else ""
                raise DistNetworkError(
                    f"{resolved}nothing accepted a connection {there}within {timeout_s} s: {err}"
                ) from None
            time.sleep(0.25)
    with _watch(answer_limit_s(timeout_s), silent_port_message(dist_env, timeout_s)):
        TCPStore(address, dist_env.master_port, None, False, timedelta(seconds=timeout_s))
    return address


def _own_address(addresses: list[tuple]) -> str | None:
    """The first of MASTER_ADDR's `addresses` that is this host's (one a socket can bind): where rank 0's own store
    client connects to its server. None where none is (torch's rendezvous then fails in its own words)."""
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.bind((address[0], 0, *address[2:]))
            return str(address[0])
        except OSError:
            continue
    return None


@contextlib.contextmanager
def _master_addr(address: str | None) -> Iterator[None]:
    """MASTER_ADDR as the address it was looked up as (`address`), while torch's env:// rendezvous reads it.

    torch's rendezvous (torch/distributed/rendezvous.py, _env_rendezvous_handler) passes MASTER_ADDR to its TCPStore,
    whose C++ client looks the name up again at each connection try, with no bound of its own: a DNS server that
    stalled after `_lookup` answered held a rank there until the watch's backstop (twice train.dist_timeout_s and
    GRACE_S), and the job failed although rank 0 was there. The name is put back after: what reads it later
    (`distributed.discover`, again at the startup shard check) sees what the user set."""
    before = os.environ.get("MASTER_ADDR")
    if address is not None:
        os.environ["MASTER_ADDR"] = address
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MASTER_ADDR", None)
        else:
            os.environ["MASTER_ADDR"] = before


@contextlib.contextmanager
def bounded_rendezvous(dist_env: DistEnv, timeout_s: int) -> Iterator[None]:
    """Run the body (torch's rendezvous, which releases the GIL while it waits) on a port checked to answer (on a rank
    that is a client of the job's store), and end this process if the body has not returned within
    `limit_s(timeout_s)`. Raises torch's DistNetworkError where nothing accepted a connection within the timeout,
    RendezvousError where MASTER_ADDR did not resolve within it (on every rank: rank 0's store connects to it too),
    and NgptConfigError (`thread_limit_line`) where this rank cannot start a thread under `ulimit -u`, after telling
    the other ranks (a thread failure under another limit is raised as it is, for ngpt_ds.limits to name). A line
    another rank told (rendezvous_peers.Listener) ends this process during the body."""
    deadline = time.monotonic() + timeout_s
    try:
        addresses = _lookup(dist_env, timeout_s, deadline)
        address: str | None = None  # what MASTER_ADDR was looked up as, given to torch's rendezvous (`_master_addr`)
        if _store_client(dist_env):
            address = _check_the_port_answers(dist_env, timeout_s, addresses, deadline)
        else:
            address = _own_address(addresses)
        backstop = _watch(limit_s(timeout_s), lambda: message(dist_env, timeout_s))  # its line said when it ends
        # a one-process run has nobody to hear from
        others = (
            hear(Listener(dist_env, addresses).told, EXIT_CODE, dist_env.world_size)
            if dist_env.world_size > 1
            else contextlib.nullcontext()
        )
        with backstop, others, _master_addr(address):
            yield
    except RuntimeError as err:  # this rank could not start a thread: its own, torch's store's or gloo's
        if not thread_failed(err):
            raise
        line = thread_limit_line(dist_env.rank)
        if line is None:  # a limit ngpt_ds.limits names (`ulimit -s`, `ulimit -v`), through the command's limit_named
            from ngpt_ds.limits import TRAIN, limit_failure

            named = limit_failure(err, TRAIN)
            told = f"rank {dist_env.rank}: {named or f'could not start a thread ({err})'}"
            tell_the_job(dist_env, told, deadline, _store_client(dist_env))
            raise
        tell_the_job(dist_env, line, deadline, _store_client(dist_env))
        raise NgptConfigError(line) from None


@contextlib.contextmanager
def _watch(limit: float, line: str | Callable[[], str]) -> Iterator[None]:
    """If the body has not returned within `limit` s, print `line` (or what it gives then) and end this process (under
    mpirun: the whole job, whose rank 0 waits in MPI_Finalize for this one). A thread: the main thread is inside
    torch's C++ client."""
    done = threading.Event()

    def watch() -> None:
        if not done.wait(limit):
            end_process(line if isinstance(line, str) else line(), EXIT_CODE)

    threading.Thread(target=watch, name="ngpt_ds-rendezvous-watch", daemon=True).start()
    try:
        yield
    finally:
        done.set()
