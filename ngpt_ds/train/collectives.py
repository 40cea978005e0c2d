"""Collectives on the communication device: the one way project code calls torch.distributed.

A process group only takes tensors of the device types its backend is bound to. NCCL takes
CUDA tensors only, so on GPUs a CPU tensor is refused ("No backend type associated with
device type cpu"). Several buffers in ngpt_ds do not live on the GPU: under ZeRO-Offload
(`offload_optimizer`) the fp32 master partition, and with it the hypersphere hook's norm
sums, is on the CPU. Every collective in the trainer therefore goes through `all_reduce_on`,
which runs it on the communication device (the DeepSpeed engine's device: the accelerator's
current device, `cpu` on a CPU-only machine) and copies the result back.

`all_answers` gathers a part each rank computes on its own, which may fail on one rank alone (an I/O error of one
node's view of shared storage, a bug): each rank's answer or its error is what it sends, and after the gather every
rank raises the same error. Raised before the gather, the error sent that rank on to the next collective
(job.train's agreement) while the others waited in this one: the two paired up, the failing rank stopped naming
another rank's listing, and the others went on or waited until train.dist_timeout_s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist

from ngpt_ds import log
from ngpt_ds.errors import NgptConfigError

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine


_log = log.get(__name__)


def communication_device(engine: DeepSpeedEngine) -> torch.device:
    """The device collectives run on: the engine's (= the accelerator's current) device."""
    return torch.device(engine.device)


def all_reduce_on(
    tensor: torch.Tensor,
    device: torch.device | str,
    group: dist.ProcessGroup | None = None,
    op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM,
) -> torch.Tensor:
    """All-reduce `tensor` in place over `group`, with the collective on `device`.

    A tensor already on `device` is reduced directly; any other is copied there, reduced,
    and copied back (one small copy each way: the buffers passed here are norm sums and
    scalars, never weights). Returns `tensor`.
    """
    device = torch.device(device)
    if tensor.device == device:
        dist.all_reduce(tensor, op=op, group=group)
        return tensor
    buffer = tensor.to(device)
    dist.all_reduce(buffer, op=op, group=group)
    return tensor.copy_(buffer)


Answer = TypeVar("Answer")

_FAILED = "ngpt_ds: failed"
"""The tag of a rank's error in the gathered list."""


def all_answers(answer: Callable[[], Answer], what: str) -> list[Answer]:
    """Collective: every rank's answer(), in rank order. If answer() raised on any rank, every rank raises
    NgptConfigError("rank R: Type: message") of the lowest such rank, after this one gather; the failing rank
    logs its traceback first, once, on its stderr (`what`: what it was doing, for that line): errors pass the
    rank filter of ngpt_ds.log on every rank."""
    mine: Any
    try:
        mine = answer()
    except Exception as err:  # noqa: BLE001 (any error: an answer, the other ranks are waiting for it)
        _log.exception(f"rank {dist.get_rank()}: {what} failed")
        mine = (_FAILED, one_line(err))
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    for rank, value in enumerate(gathered):
        if isinstance(value, tuple) and len(value) == 2 and value[0] == _FAILED:
            raise NgptConfigError(f"rank {rank}: {value[1]}")
    return gathered


def one_line(err: BaseException) -> str:
    """'Type: message' on one line (the message's lines joined), or 'Type' where the message is empty. A MemoryError
    read 'MemoryError: ', and torch's messages of several lines printed their later lines after 'error: ...'
    without that prefix; the whole text is in the failing rank's traceback."""
    message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return f"{type(err).__name__}: {message}" if message else type(err).__name__
