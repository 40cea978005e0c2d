"""A rank of the job lost during the trainer's startup: one line naming this rank and where to look, not a traceback.

Once the process group formed, the startup (the DeepSpeed engine, the tensor-parallel groups, the hypersphere
hook's first normalization, a checkpoint's load) runs collectives on every rank. A rank that dies in it (an error
of its own, the out-of-memory killer, a failed node) left the others a traceback of some 20 to 40 frames deep in
DeepSpeed or torch, ending in gloo's "Connection closed by peer" (or "reset by peer", "Broken pipe"; NCCL reports its
own), or, where a new group waits on the TCPStore for the lost rank's address, a DistStoreError "wait timeout"
after train.dist_timeout_s. The wait stays as it is (README "Preemption, time limits and lost ranks": a rank that
is merely slow may still come); only its end is said in words.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch.distributed as dist

from ngpt_ds.distributed import RendezvousError

if TYPE_CHECKING:
    from collections.abc import Iterator

PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Connection refused")
"""What gloo and the TCPStore say when the other end's process is gone."""

_AFTER = (
    "nothing was trained. Read the other ranks' logs for why (an error, the out-of-memory killer, a node that "
    "failed), fix that and start the job again; it resumes from its newest checkpoint"
)


@contextlib.contextmanager
def peers_watched(rank: int, timeout_s: int) -> Iterator[None]:
    """Around the startup after the process group formed: a lost peer's error becomes a RendezvousError (exit 1, one
    `error:` line); any other error passes as it is."""
    try:
        yield
    except RuntimeError as err:
        text = str(err)
        if any(words in text for words in PEER_GONE):
            raise RendezvousError(
                f"rank {rank}: another rank of the job died during the startup (its connection closed while the ranks "
                f"started together): {_AFTER}"
            ) from None
        if isinstance(err, dist.DistStoreError) and "timeout" in text.lower():
            raise RendezvousError(
                f"rank {rank}: another rank of the job stopped answering during the startup: this rank waited "
                f"{timeout_s} s (train.dist_timeout_s) for it to join a group the ranks start together. It died or "
                f"hangs: {_AFTER}"
            ) from None
        raise
