"""A peer lost during the startup under NCCL: the others say so in one line, as under gloo (ngpt_ds/train/startup_peers.py).

Fault: startup_peers matched gloo's and the TCPStore's words only. Under NCCL a lost peer reaches the others as a
torch.distributed.DistBackendError in NCCL's words ("remote process exited or there was a network error",
"ncclRemoteError", "NCCL communicator was aborted", the watchdog's "Watchdog caught collective operation timeout"),
none of which it knew, so every rank on GPUs still ended in a traceback of 20 to 40 frames. Each case below raises the
exception type torch raises, with the text torch and NCCL write (their sources are cited in startup_peers.py), inside
peers_watched, and asserts the one line. Old code: the DistBackendError passed through unchanged (DID NOT RAISE
RendezvousError).
"""

import pytest
import torch.distributed as dist

from ngpt_ds.distributed import RendezvousError
from ngpt_ds.train.startup_peers import peers_watched

AFTER = (
    "nothing was trained. Read the other ranks' logs for why (an error, the out-of-memory killer, a node that failed), "
    "fix that and start the job again; it resumes from its newest checkpoint"
)
DIED = f"rank 3: another rank of the job died during the startup (its connection closed while the ranks started together): {AFTER}"
SILENT = (
    "rank 3: another rank of the job stopped answering during the startup: this rank waited 600 s "
    f"(train.dist_timeout_s) for it to join a group the ranks start together. It died or hangs: {AFTER}"
)
ABORTED = (
    "rank 3: another rank of the job died or stopped answering during the startup (NCCL aborted the communicator the "
    f"ranks started together): {AFTER}"
)
REMOTE = (
    "remote process exited or there was a network error, NCCL version 2.27.5\n"
    "ncclRemoteError: A call failed possibly due to a network error or a remote process exiting prematurely.\n"
    "Last error:\nsocketProgress: Connection closed by remote peer node-2<45074>"
)
WATCHDOG = (
    "[Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1, OpType=BROADCAST, NumelIn=131072000, "
    "NumelOut=131072000, Timeout(ms)=600000) ran for 600081 milliseconds before timing out."
)
CASES = {
    # communicator init or a collective: C10D_NCCL_CHECK's text (NCCLUtils.hpp) for ncclRemoteError
    "remote error": (
        dist.DistBackendError,
        f"NCCL error in: /pytorch/torch/csrc/distributed/c10d/NCCLUtils.cpp:77, {REMOTE}",
        DIED,
    ),
    # the watchdog thread's exception, rethrown by the work's wait
    "watchdog error": (
        dist.DistBackendError,
        "[PG ID 0 PG GUID 0 Rank 3] Process group watchdog thread terminated with exception: NCCL error: " + REMOTE,
        DIED,
    ),
    "watchdog timeout": (dist.DistBackendError, WATCHDOG, SILENT),
    "aborted after a remote error": (
        dist.DistBackendError,
        f"NCCL communicator was aborted on rank 3.  Original reason for failure was: NCCL error: {REMOTE}",
        DIED,
    ),
    "aborted after a timeout": (
        dist.DistBackendError,
        f"NCCL communicator was aborted on rank 3.  Original reason for failure was: {WATCHDOG}",
        SILENT,
    ),
    "aborted": (dist.DistBackendError, "NCCL communicator was aborted on rank 3. ", ABORTED),
    "system error, NCCL before 2.12": (
        dist.DistBackendError,
        "NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1191, unhandled system error, NCCL version "
        "2.10.3\nncclSystemError: System call (e.g. socket, malloc) or external library call failed or device error. "
        "It can be also caused by unexpected exit of a remote peer, you can check NCCL warnings for failure reason and "
        "see if there is connection closure by a peer.",
        DIED,
    ),
    "torch.cuda.nccl": (RuntimeError, "NCCL Error 6: remote process exited or there was a network error", DIED),
    # gloo's and the TCPStore's, as before
    "gloo closed": (
        RuntimeError,
        "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:19001",
        DIED,
    ),
    "gloo reset": (RuntimeError, "[../third_party/gloo/gloo/transport/tcp/pair.cc:598] Connection reset by peer", DIED),
    "store timeout": (dist.DistStoreError, "wait timeout after 600000ms, keys: /default_pg/0//cpu//0", SILENT),
}


@pytest.mark.parametrize("case", CASES)
def test_a_lost_peer_in_nccl_or_gloo_words_is_one_line(case):
    kind, text, expected = CASES[case]
    with pytest.raises(RendezvousError) as caught, peers_watched(3, 600):
        raise kind(text)
    assert str(caught.value) == expected
    assert "\n" not in str(caught.value)
    assert caught.value.__suppress_context__ and caught.value.__cause__ is None


NOT_A_LOST_PEER = {
    # seen on a GPU machine (torch 2.11, NCCL 2.28.9): two ranks on one GPU
    "NCCL invalid usage": (
        dist.DistBackendError,
        "NCCL error in: /pytorch/torch/csrc/distributed/c10d/NCCLUtils.cpp:93, invalid usage (run with NCCL_DEBUG=WARN "
        "for details), NCCL version 2.28.9\nncclInvalidUsage: This usually reflects invalid usage of NCCL library.\n"
        "Last error:\nDuplicate GPU detected : rank 1 and rank 0 both on CUDA device 60",
    ),
    # review28a: the abort that follows this rank's own error keeps that reason (it had said another rank died)
    "NCCL aborted for this rank's own error": (
        dist.DistBackendError,
        "NCCL communicator was aborted on rank 1.  Original reason for failure was: NCCL error in: "
        "/pytorch/torch/csrc/distributed/c10d/NCCLUtils.cpp:93, invalid usage (run with NCCL_DEBUG=WARN for details), "
        "NCCL version 2.28.9\nncclInvalidUsage: This usually reflects invalid usage of NCCL library.",
    ),
    "NCCL dtype": (TypeError, "Input tensor data type is not supported for NCCL process group: Short"),
    "NCCL words in another type": (ValueError, WATCHDOG),
    "a plain error": (RuntimeError, "CUDA out of memory. Tried to allocate 2.00 GiB"),
}


@pytest.mark.parametrize("case", NOT_A_LOST_PEER)
def test_any_other_error_passes_unchanged(case):
    from ngpt_ds.train.startup_peers import lost_peer  # new with the NCCL words

    kind, text = NOT_A_LOST_PEER[case]
    error = kind(text)
    with pytest.raises(kind) as caught, peers_watched(3, 600):
        raise error
    assert caught.value is error
    assert lost_peer(error, 3, 600) is None
