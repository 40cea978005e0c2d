"""A rank of the job lost during the trainer's startup: one line naming this rank and where to look, not a traceback.

Once the process group formed, the startup (the DeepSpeed engine, the tensor-parallel groups, the hypersphere
hook's first normalization, a checkpoint's load) runs collectives on every rank. A rank that dies in it (an error
of its own, the out-of-memory killer, a failed node) left the others a traceback of some 20 to 40 frames deep in
DeepSpeed or torch, ending in gloo's "Connection closed by peer" (or "reset by peer", "Broken pipe"), NCCL's
DistBackendError (below), or, where a new group waits on the TCPStore for the lost rank's address, a DistStoreError
"wait timeout" after train.dist_timeout_s. The wait stays as it is (README "Preemption, time limits and lost
ranks": a rank that is merely slow may still come); only its end is said in words.

NCCL's words, matched by type first: torch raises every NCCL failure as torch.distributed.DistBackendError
(torch/csrc/distributed/c10d/NCCLUtils.hpp, C10D_NCCL_CHECK and its _TIMEOUT variants: "NCCL error in:
<file>:<line>, <ncclGetErrorString>, NCCL version <v>" then getNcclErrorDetailStr's line and NCCL's "Last error:").
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import TYPE_CHECKING

import torch.distributed as dist

from ngpt_ds.distributed import RendezvousError

if TYPE_CHECKING:
    from collections.abc import Iterator

PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Connection refused")
"""What gloo and the TCPStore say when the other end's process is gone."""

NCCL_PEER_GONE = (
    # NVIDIA/nccl src/init.cc, ncclGetErrorString: ncclRemoteError (6), a peer's process exited or its link broke.
    "remote process exited or there was a network error",
    # torch/csrc/distributed/c10d/NCCLUtils.cpp, getNcclErrorDetailStr: the line torch adds for ncclRemoteError.
    "ncclRemoteError",
    # The same function for ncclSystemError, built against an NCCL older than ncclRemoteError (2.12).
    "It can be also caused by unexpected exit of a remote peer",
    # NVIDIA/nccl src/misc/socket.cc, socketProgress: NCCL's "Last error:" when the peer's socket closed.
    "Connection closed by remote peer",
)
"""What NCCL, through torch, says when a peer's process is gone (in a DistBackendError)."""

NCCL_TIMED_OUT = "Watchdog caught collective operation timeout"
"""torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp, WorkNCCL::checkTimeout: "[Rank R] Watchdog caught collective
operation timeout: WorkNCCL(SeqNum=..., OpType=..., Timeout(ms)=...) ran for N milliseconds before timing out." It
is also the reason a later call's "NCCL communicator was aborted" names."""

NCCL_ABORTED = "NCCL communicator was aborted"
"""torch/csrc/distributed/c10d/NCCLUtils.cpp, NCCLComm::getNcclComm: "NCCL communicator was aborted on rank R.
Original reason for failure was: ...": the watchdog aborted the communicator after an error or a timeout."""

NCCL_ABORT_REASON = "Original reason for failure was:"
"""The same message's second sentence, where torch knows why the communicator was aborted."""

CUDA_NCCL_PEER_GONE = "NCCL Error 6:"
"""torch/csrc/cuda/nccl.cpp, throw_nccl_error: "NCCL Error <code>: <ncclGetErrorString>" as a plain RuntimeError
(torch.cuda.nccl, not a process group); 6 is ncclRemoteError (NVIDIA/nccl src/nccl.h.in)."""

_AFTER = (
    "nothing was trained. Read the other ranks' logs for why (an error, the out-of-memory killer, a node that "
    "failed), fix that and start the job again; it resumes from its newest checkpoint"
)


def _died(rank: int) -> RendezvousError:
    return RendezvousError(
        f"rank {rank}: another rank of the job died during the startup (its connection closed while the ranks "
        f"started together): {_AFTER}"
    )


def _stopped_answering(rank: int, timeout_s: int) -> RendezvousError:
    return RendezvousError(
        f"rank {rank}: another rank of the job stopped answering during the startup: this rank waited "
        f"{timeout_s} s (train.dist_timeout_s) for it to join a group the ranks start together. It died or "
        f"hangs: {_AFTER}"
    )


def lost_peer(err: BaseException, rank: int, timeout_s: int) -> RendezvousError | None:
    """The one-line error for `err` when it says a peer rank is gone or stopped answering; None for any other."""
    if not isinstance(err, RuntimeError):
        return None
    text = str(err)
    if isinstance(err, dist.DistBackendError):  # NCCL: its own words (the module docstring)
        if NCCL_TIMED_OUT in text:
            return _stopped_answering(rank, timeout_s)
        if any(words in text for words in NCCL_PEER_GONE):
            return _died(rank)
        # An abort whose reason torch gives and is none of the above (this rank's own invalid usage, a CUDA error)
        # is no lost peer: it passes as it is, its reason kept.
        if NCCL_ABORTED in text and NCCL_ABORT_REASON not in text:
            return RendezvousError(
                f"rank {rank}: another rank of the job died or stopped answering during the startup (NCCL aborted "
                f"the communicator the ranks started together): {_AFTER}"
            )
    if any(words in text for words in PEER_GONE) or text.startswith(CUDA_NCCL_PEER_GONE):
        return _died(rank)
    if isinstance(err, dist.DistStoreError) and "timeout" in text.lower():
        return _stopped_answering(rank, timeout_s)
    return None


TOLD_WAIT_S = 5
"""How long a rank that lost a peer waits for that peer's line in rank 0's store (`told_by_a_lost_peer`)."""


def told_by_a_lost_peer(err: BaseException, rank: int) -> RendezvousError | None:
    """Where `err` says a peer is gone and that peer sets its line in rank 0's store as it ends (a rank that could not
    start a thread under `ulimit -u`, ngpt_ds.rendezvous_peers.tell_the_job): that line, as the ranks still in the
    rendezvous say it. Under `ulimit -u 5` such a rank could fail in gloo's threads after the group had formed on
    rank 0, which then ended on a 37-line "Connection reset by peer" (or "closed by peer") traceback in its first
    collective (agreement.stop_all_if_any_failed). The line comes after the closed connection (the lost rank's
    group is torn down as its error unwinds, then it tells the job): waited for, TOLD_WAIT_S at most, which a peer
    lost for another reason adds to this rank's end. None where no line comes, or rank 0's store is gone too."""
    if lost_peer(err, rank, 0) is None:
        return None
    from ngpt_ds.rendezvous_peers import cannot_join_key

    key = cannot_join_key()
    try:
        store = dist.distributed_c10d._get_default_store()  # torch's default group's store (as device_check reads it)
        while isinstance(store, dist.PrefixStore):  # the group's prefix, and the rendezvous's: the line's key has none
            store = store.underlying_store
        store.set_timeout(timedelta(seconds=TOLD_WAIT_S))  # this rank ends now: no later call waits on the store
        store.wait([key], timedelta(seconds=TOLD_WAIT_S))
        said = store.get(key).decode("utf-8", errors="replace")
    except (RuntimeError, ValueError, OSError):  # no line (torch's DistStoreError), no group, or no store
        return None
    return RendezvousError(f"rank {rank} stops: {said}")


@contextlib.contextmanager
def peers_watched(rank: int, timeout_s: int) -> Iterator[None]:
    """Around the startup after the process group formed: a lost peer's error becomes a RendezvousError (exit 1, one
    `error:` line: the lost peer's own where it left one, `told_by_a_lost_peer`); any other error passes as it is."""
    try:
        yield
    except RendezvousError:  # already the one line (a watched block inside another: the trainer's in the job's)
        raise
    except RuntimeError as err:
        lost = told_by_a_lost_peer(err, rank) or lost_peer(err, rank, timeout_s)
        if lost is None:
            raise
        raise lost from None
