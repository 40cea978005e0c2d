"""Collectives on the communication device: the one way project code calls torch.distributed.

A process group only takes tensors of the device types its backend is bound to. NCCL takes
CUDA tensors only, so on GPUs a CPU tensor is refused ("No backend type associated with
device type cpu"). Several buffers in ngpt_ds do not live on the GPU: under ZeRO-Offload
(`offload_optimizer`) the fp32 master partition, and with it the hypersphere hook's norm
sums, is on the CPU. Every collective in the trainer therefore goes through `all_reduce_on`,
which runs it on the communication device (the DeepSpeed engine's device: the accelerator's
current device, `cpu` on a CPU-only machine) and copies the result back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine


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
