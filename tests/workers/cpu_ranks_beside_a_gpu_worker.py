"""One rank of a CPU job (DS_ACCELERATOR=cpu) on a machine with one CUDA GPU, imitated on a CPU.

usage: cpu_ranks_beside_a_gpu_worker.py  (torch's env:// variables set by the test, one process per rank)

torch.cuda answers as on a one-GPU machine: available, one device, and set_device refuses an index beyond
it with CUDA's own words ("invalid device ordinal"). Every set_device call is recorded. The worker joins
the process group through the trainer's init_process_group, gathers one object (the first collective a
trainer makes), and prints one JSON line: the set_device calls, the torch threads, the gathered ranks.
"""

import json
import os
import sys

import torch

set_device_calls: list[int] = []


def _set_device(device) -> None:
    index = torch.device(device).index if not isinstance(device, int) else device
    set_device_calls.append(index)
    if index is None or index >= 1:
        raise RuntimeError("CUDA error: invalid device ordinal")


torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
torch.cuda.set_device = _set_device

import torch.distributed as dist  # noqa: E402

from ngpt_ds import distributed  # noqa: E402
from ngpt_ds.train.builder import init_process_group  # noqa: E402

init_process_group(distributed.discover(), timeout_s=60)
everyone: list = [None] * dist.get_world_size()
dist.all_gather_object(everyone, dist.get_rank())
print(
    json.dumps(
        {
            "rank": dist.get_rank(),
            "backend": dist.get_backend(),
            "set_device_calls": set_device_calls,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "gathered": everyone,
        }
    ),
    flush=True,
)
dist.barrier()
dist.destroy_process_group()
sys.exit(distributed.exit_process(0, joined=True))
