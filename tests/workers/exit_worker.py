"""A rank whose gloo worker threads are still busy with collectives when it exits: the race behind
"terminate called without an active exception" (SIGABRT) after finished runs.

Usage (under torchrun, 2 ranks): exit_worker.py exit_process|interpreter
  exit_process: end through ngpt_ds.distributed.exit_process, as launch/train.py does;
  interpreter:  a plain sys.exit, through Python's interpreter teardown (the old way).
"""

import sys

import torch
import torch.distributed as dist

from ngpt_ds import distributed

distributed.export(distributed.discover())
dist.init_process_group("gloo")
kept = dist.new_group([0, 1])  # held past destroy_process_group, as DeepSpeed's module globals hold theirs
dist.barrier()
for _ in range(200):
    tensor = torch.ones(4096)
    dist.all_reduce(tensor, group=kept, async_op=True)  # left for the worker threads to finish and release
    del tensor
dist.destroy_process_group()
if sys.argv[1] == "exit_process":
    sys.exit(distributed.exit_process(0))
sys.exit(0)
