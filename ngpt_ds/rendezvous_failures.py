"""What a rank says when the job's ranks do not meet to start the process group: one line for torch's rendezvous
errors (`rendezvous_failure`), and a bound on the wait where torch's own timeout does not hold
(`bounded_rendezvous`).

The bound: torch's store client gives up after train.dist_timeout_s when nothing listens on MASTER_PORT, but not
when some other program listens there and never answers: the connection is accepted (by the kernel, on that
program's behalf), and the client then waits for a reply for good. Rank 0, which could not listen on the port,
says so in one line and exits; under mpirun it then waits for the other ranks in MPI_Finalize, and under srun the
step waits for them: the job stayed until the other program closed its port (81 s with a 30 s timeout, or never).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # ngpt_ds.distributed re-exports this module's errors
    from ngpt_ds.distributed import DistEnv

GRACE_S = 10
"""Past twice train.dist_timeout_s: a rank may reach the rendezvous up to one timeout before rank 0 (its client
retries that long) and rank 0 then waits one timeout for the last rank, so a rendezvous that is coming completes
within two; the grace lets torch's own, more specific, timeout error come first."""

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
    """How long a rank waits in the rendezvous before `bounded_rendezvous` ends it."""
    return 2 * timeout_s + GRACE_S


def message(dist_env: DistEnv, timeout_s: int) -> str:
    where = _where(dist_env)
    return (
        f"rank {dist_env.rank} waited {limit_s(timeout_s)} s (twice train.dist_timeout_s, {timeout_s} s, and "
        f"{GRACE_S}) for the job's rendezvous on {where}, which accepted the connection and never answered: "
        "another program listens on that port (rank 0 then could not), or rank 0 hangs. Set MASTER_PORT to a "
        "free port, or stop that program, and start the job again; it resumes from its newest checkpoint"
    )


@contextlib.contextmanager
def bounded_rendezvous(dist_env: DistEnv, timeout_s: int) -> Iterator[None]:
    """Run the body (torch's rendezvous, which releases the GIL while it waits); if it has not returned within
    `limit_s(timeout_s)`, print one line naming the port and end this process (under mpirun: the whole job, whose
    rank 0 waits in MPI_Finalize for this one). A thread: the rank's main thread is inside torch's C++ client."""
    done = threading.Event()

    def watch() -> None:
        if done.wait(limit_s(timeout_s)):
            return
        sys.stderr.write(f"error: {message(dist_env, timeout_s)}\n")  # one write: ranks share the pipe
        sys.stderr.flush()
        sys.stdout.flush()
        mpi = sys.modules.get("mpi4py.MPI")
        if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
            # mpi4py initializes MPI_THREAD_MULTIPLE: Abort from this thread is allowed, and ends the job (a rank
            # that exits without MPI_Finalize does too, with a longer complaint from mpirun).
            mpi.COMM_WORLD.Abort(EXIT_CODE)
        os._exit(EXIT_CODE)

    threading.Thread(target=watch, name="ngpt_ds-rendezvous-watch", daemon=True).start()
    try:
        yield
    finally:
        done.set()
