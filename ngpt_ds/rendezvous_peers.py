"""A rank that cannot join the job's rendezvous tells the others, which stop with its line instead of waiting for it.

Under a low `ulimit -u` (or a large `ulimit -s`) a rank failed to start the thread of its lookup of MASTER_ADDR, or
torch's store's or gloo's, and stopped alone; the others, started with no launcher to end the job (plain processes,
srun without --kill-on-bad-exit), waited for it until train.dist_timeout_s (10 minutes by default) and then named a
rank that 'never arrived'. Such a rank's main thread still reaches rank 0's store (torch's client starts no thread):
it sets CANNOT_JOIN_KEY to its line (`tell_the_job`), and each other rank, which asks the store every second or so
during the rendezvous (`hear`, `Listener`; more seldom in a large job, `hear_interval_s`), stops with it, as a check
that fails on one rank ends every rank at startup (ngpt_ds.train.agreement). A rank 0 that cannot start a thread cannot serve the store either: the others still wait
the timeout for it.

Used by ngpt_ds.rendezvous_failures (bounded_rendezvous), which says everything else about the rendezvous; this
module also holds what both need to reach rank 0's store from a thread of their own (`connect_first`) and to end the
process from one (`end_process`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import resource
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from ngpt_ds.limits import task_limit, tasks_of

if TYPE_CHECKING:
    from ngpt_ds.distributed import DistEnv


def connect_first(addresses: list[tuple], wait_s: float) -> str:
    """The first of MASTER_ADDR's `addresses` that accepts a connection (closed at once), as socket.create_connection
    tries them but with no lookup of its own; raises the last one's OSError."""
    error: OSError = ConnectionRefusedError("no address")
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(wait_s)
                sock.connect(address)
            return address[0]
        except OSError as err:
            error = err
    raise error


def end_process(line: str, code: int) -> NoReturn:
    sys.stderr.write(f"error: {line}\n")  # one write: ranks share the pipe
    sys.stderr.flush()
    sys.stdout.flush()
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        # mpi4py initializes MPI_THREAD_MULTIPLE: Abort from this thread is allowed, and ends the job (a rank
        # that exits without MPI_Finalize does too, with a longer complaint from mpirun).
        mpi.COMM_WORLD.Abort(code)
    os._exit(code)


CANNOT_JOIN_KEY = "ngpt_ds/cannot-join"
"""The store key a rank that cannot join sets to its line (one key: a second such rank's line replaces the first),
with torchrun's restart count after it (`cannot_join_key`)."""


def cannot_join_key() -> str:
    """CANNOT_JOIN_KEY for this start of the job: torchrun's agent serves the store its ranks meet on and keeps it
    across the restarts of --max-restarts, where a line left by the previous start would stop the next one."""
    return f"{CANNOT_JOIN_KEY}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


HEAR_S = 1.0
"""How often a rank in the rendezvous asks rank 0's store for CANNOT_JOIN_KEY in a small job (`hear_interval_s`)."""

HEARD_PER_S = 500
"""About the most questions a second all the ranks of a job together ask rank 0's store (`hear_interval_s`)."""


def hear_interval_s(world_size: int, draw: Callable[[], float] = random.random) -> float:
    """The wait before a rank's next question to rank 0's store: HEAR_S up to HEARD_PER_S ranks, then world_size /
    HEARD_PER_S (8 s at 4,000 ranks), and up to a quarter more drawn at random (`draw`, in [0, 1)) so that ranks
    started together do not ask together. At one question a second a rank, 4,000 ranks asked 4,000 times a second
    the store that torch's own rendezvous runs on, which serves its clients in turn; a small job still ends within
    about a second of the line."""
    return max(HEAR_S, world_size / HEARD_PER_S) * (1 + 0.25 * draw())


_THREAD = "can't start new thread"
_THREAD_EAGAIN = os.strerror(errno.EAGAIN)
"""A C++ std::thread (torch's store, gloo) that could not start: its std::system_error says no more than this."""


def thread_failed(err: BaseException) -> bool:
    return isinstance(err, RuntimeError) and (_THREAD in str(err) or str(err).strip() == _THREAD_EAGAIN)


def thread_limit_line(rank: int) -> str | None:
    """The line for a thread this rank could not start under `ulimit -u` (RLIMIT_NPROC, which counts every process
    and thread of the user); None where that limit is not the cause (ngpt_ds.limits.task_limit, which every command's
    line uses too)."""
    limit = task_limit("the training command", "start the job again")
    if limit is None:
        return None
    said, fix = limit
    return (
        f"rank {rank} could not start a thread for the job's rendezvous: {said}, and a rank starts dozens of threads "
        f"(torch's store, gloo, its checks). {fix}"
    )


def tell_the_job(dist_env: DistEnv, line: str, deadline: float, client: bool) -> None:
    """Set CANNOT_JOIN_KEY to `line` in rank 0's store, from this thread (a rank that cannot start one), waiting for the
    store until `deadline` on a rank that is its `client`; a rank 0 that serves it tells where its server already
    listens (`distributed._listen_for_rendezvous`), and does not wait. MASTER_ADDR is looked up here with no bound of
    its own (no thread to bound it with): none is needed for an IP address. Nothing is raised: the others then end at
    their timeout."""
    from torch.distributed import TCPStore

    try:
        addresses = socket.getaddrinfo(dist_env.master_addr, dist_env.master_port, type=socket.SOCK_STREAM)
        while True:
            try:
                address = connect_first(addresses, min(5.0, max(0.5, deadline - time.monotonic())))
                break
            except OSError:
                if not client or time.monotonic() >= deadline:
                    return
                time.sleep(0.25)
        wait_s = max(1.0, deadline - time.monotonic())
        store = TCPStore(address, dist_env.master_port, None, False, timedelta(seconds=wait_s))
        store.set(cannot_join_key(), line)
        # A round trip after it: the server has the line before this rank exits and its peers, which may meet the
        # closed connection first (a rank lost after the group formed: train.startup_peers), look for it
        store.check([cannot_join_key()])
    except (OSError, RuntimeError, UnicodeError):  # torch's DistError is a RuntimeError
        return


class Listener:
    """The other side of `tell_the_job`: `told` gives the line a rank that cannot join set (prefixed with this
    rank's), or None; it connects to rank 0's store once its port accepts (a client of torch's own, no world size:
    it counts as no rank), and asks with one round trip a call."""

    def __init__(self, dist_env: DistEnv, addresses: list[tuple]) -> None:
        self.dist_env, self.addresses = dist_env, addresses
        self.store: Any = None  # torch.distributed.TCPStore, once connected
        self.lost = False

    def told(self) -> str | None:
        from torch.distributed import TCPStore

        if self.lost:
            return None
        try:
            if self.store is None:
                address = connect_first(self.addresses, HEAR_S)  # refused until rank 0's store listens: asked again
                self.store = TCPStore(address, self.dist_env.master_port, None, False, timedelta(seconds=5))
        except (OSError, RuntimeError):  # not listening yet, or a store that does not answer: asked again
            return None
        try:
            if not self.store.check([cannot_join_key()]):
                return None
            said = self.store.get(cannot_join_key()).decode("utf-8", errors="replace")
        except (OSError, RuntimeError):  # rank 0's store is gone: torch's client warns, with its C++ frames, at
            self.lost = True  # each call that meets the closed connection; asked no more (the watch's bound holds)
            return None
        return f"rank {self.dist_env.rank} stops: {said}"


def task_limit_clause() -> str:
    """Where this rank runs at its `ulimit -u` (its user's processes and threads one short of it, or more): a clause
    for the line of rendezvous_failures' backstop. gloo's and torch's C++ threads that could not start under the
    limit did not always raise: a rank under `ulimit -u 5` hung in torch's rendezvous after rank 0 had met it, until
    the backstop, whose line named no cause."""
    soft = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    if soft == resource.RLIM_INFINITY or os.getuid() == 0:
        return ""
    tasks = tasks_of(os.getuid())
    if tasks is not None and tasks + 1 < soft:  # room for more: not the cause (a cluster's `ulimit -u` of thousands)
        return ""
    running = f", of which it runs {tasks} now" if tasks is not None else ""
    return (
        f"; this rank's user (uid {os.getuid()}) may run {soft} processes and threads in all (`ulimit -u`){running}: "
        "a thread it could not start may be what hangs, and raising the limit the fix"
    )


@contextlib.contextmanager
def hear(told: Callable[[], str | None], code: int, world_size: int) -> Iterator[None]:
    """Ask `told` every `hear_interval_s(world_size)` until the body returns, and end this process with the line it
    gives (a rank that cannot join). A thread of its own, not the backstop's (rendezvous_failures._watch): a store client that connected to a port
    which never answers waits for good, and the backstop must still end the rank."""
    done = threading.Event()

    def hear() -> None:
        while not done.wait(hear_interval_s(world_size)):
            heard = told()
            if heard is not None and not done.is_set():
                end_process(heard, code)

    threading.Thread(target=hear, name="ngpt_ds-rendezvous-hear", daemon=True).start()
    try:
        yield
    finally:
        done.set()
