"""launch/train.py with one shard truncated in place after startup: the fault of
tests/test_data_shard_rewritten_in_place.py (`cp fresh/train_000000.bin data/` or `rsync --inplace` into the
dataset of a running job: the copy opens the shard with O_TRUNC, then writes it again).

Usage (each rank a plain process with torch's env:// variables):
    shard_truncated_worker.py RANK SHARD -- <launch/train.py options>
Rank RANK truncates SHARD to 0 bytes once every rank's trainer is built, just before training starts; every
rank waits for it before its first step.
"""

import os
import sys

import torch.distributed as dist

from ngpt_ds.cli.train import main
from ngpt_ds.train import loop

rank, shard = int(sys.argv[1]), sys.argv[2]
assert sys.argv[3] == "--"
fit = loop.Trainer.fit


def truncated_then_fit(self: loop.Trainer) -> loop.Summary:
    dist.barrier()  # every rank past its startup checks, which would find the damage (other tests cover that)
    if dist.get_rank() == rank:
        os.truncate(shard, 0)
    dist.barrier()  # and no rank reads before it
    return fit(self)


loop.Trainer.fit = truncated_then_fit  # type: ignore[method-assign]
sys.exit(main(sys.argv[4:]))
