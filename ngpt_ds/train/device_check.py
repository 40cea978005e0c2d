"""The startup check that every GPU rank drives a device of its own, on every rank at once.

Split from ngpt_ds.train.builder (which calls it from init_process_group): each rank works out its own device
problem (`device_problem`), then the ranks swap (host, node-local rank, problem) through the rendezvous's
key-value store, so that one rank's missing or shared device stops every rank with the same message. It starts
no process group of its own and touches no device.
"""

from __future__ import annotations

import os
from typing import Any

from ngpt_ds import distributed
from ngpt_ds.errors import NgptConfigError


def device_problem(accelerator: Any, local_rank: int) -> str | None:
    """Each rank drives the device of its node-local rank (DeepSpeed's engine reads LOCAL_RANK too), so each
    must see all of its node's devices. Under per-task GPU binding (srun --gpus-per-task=1, --gpu-bind) a rank
    sees one device, and every local rank but 0 died inside init_process_group with a traceback ("device_id
    cuda:3 is out of range") while the others waited for it. Returned, not raised: every rank must learn of it
    (check_devices_on_all_ranks)."""
    count = accelerator.device_count()
    if local_rank < count:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (
        f"node-local rank {local_rank} drives {accelerator.device_name()}:{local_rank}, but this process sees "
        f"{count} device(s)" + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "") + ". "
        "Every rank must see all of its node's GPUs, with at most one rank per GPU: under Slurm ask for "
        "--gpus-per-node (not --gpus-per-task or --gpu-bind); with torchrun or deepspeed start at most one "
        "process per GPU (--nproc_per_node / --num_gpus)"
    )


def check_devices_on_all_ranks(dist_env: distributed.DistEnv, problem: str | None, device_name: str) -> None:
    """Once, at startup, before any device collective: every rank posts (host, LOCAL_RANK, its device problem) in
    the rendezvous's store (not a gloo group, which needs GLOO_SOCKET_IFNAME on some clusters), and every rank raises
    the same error when any rank's device is missing or two ranks of one host drive the same device (a LOCAL_RANK
    repeated in an srun or mpirun line; NCCL hangs or stops with "Duplicate GPU detected"). Before, only the bad
    rank raised and the others waited in the first collective until the timeout (store.get's, the group's)."""
    import json
    import socket

    import torch.distributed as dist

    store = dist.distributed_c10d._get_default_store()  # torch's default group's store: no other group needed
    store.set(f"ngpt_ds/devices/{dist.get_rank()}", json.dumps([socket.gethostname(), dist_env.local_rank, problem]))
    everyone = [json.loads(store.get(f"ngpt_ds/devices/{rank}")) for rank in range(dist.get_world_size())]
    for rank, (host, _local, bad) in enumerate(everyone):
        if bad is not None:
            raise NgptConfigError(f"rank {rank} on host {host}: {bad}")
    first: dict[tuple[str, int], int] = {}
    for rank, (host, local_rank, _bad) in enumerate(everyone):
        other = first.setdefault((host, local_rank), rank)
        if other != rank:
            raise NgptConfigError(
                f"ranks {other} and {rank} on host {host} both have node-local rank {local_rank} and would drive "
                f"the same device {device_name}:{local_rank} (NCCL hangs or stops with 'Duplicate GPU detected'). "
                "Give each rank of a node its own LOCAL_RANK, 0 to the node's rank count - 1: start with torchrun "
                "or deepspeed, or under srun/mpirun leave LOCAL_RANK unset so it is read from SLURM_LOCALID / "
                "OMPI_COMM_WORLD_LOCAL_RANK"
            )
