"""Prints the page faults of re-allocating a 64 MiB buffer after the trainer's process setup.

Usage: hostmem_worker.py  (one process; NGPT_DS_HOST_MALLOC=system gives glibc's defaults, the old
behaviour). The buffer is allocated, written and freed in rounds, as a training step meets the same
buffer sizes every step; the count is of the last round. The heap settles within a few rounds (the
small allocations around the first buffers leave gaps it cannot reuse at once).
"""

import resource
import sys

import torch

from ngpt_ds import distributed
from ngpt_ds.cli import default_accelerator
from ngpt_ds.train.builder import init_process_group

BUFFER_ELEMENTS = 16 << 20  # 64 MiB of fp32: above glibc's largest default mmap threshold (32 MiB)


def touch_and_free() -> None:
    buffer = torch.empty(BUFFER_ELEMENTS)
    buffer.fill_(1.0)  # every page written, as a cast or a gradient does
    del buffer


default_accelerator()
init_process_group(distributed.discover({}), timeout_s=60)
for _ in range(10):
    touch_and_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch_and_free()
print(f"minor page faults: {resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}")
sys.exit(distributed.exit_process(0, joined=True))
