"""launch/train.py with one shard damaged after startup on one rank: the fault of
tests/test_data_fault_midrun.py, which startup's checks (meta.json's sizes, the sampled shard hashes)
cannot see because it happens later.

Usage (each rank a plain process with torch's env:// variables):
    data_fault_midrun_worker.py RANK SHARD POSITION VALUE -- <launch/train.py options>
Rank RANK writes token id VALUE at token POSITION of SHARD (a uint16 .bin file) once its trainer is built,
just before training starts, and sets the file's modification time back (damage, not a rewrite in place);
the other ranks change nothing.
"""

import os
import sys

import numpy as np
import torch.distributed as dist

from ngpt_ds.cli.train import main
from ngpt_ds.train import loop

rank, shard, position, value = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
assert sys.argv[5] == "--"
fit = loop.Trainer.fit


def damaged_then_fit(self: loop.Trainer) -> loop.Summary:
    # Every rank past its startup checks first: the ranks share the folder, and a rank still starting would
    # find the damage in its sampled shard check (the startup fault, which other tests cover).
    dist.barrier()
    if dist.get_rank() == rank:
        before = os.stat(shard)
        tokens = np.memmap(shard, dtype="<u2", mode="r+")
        tokens[position] = value
        tokens.flush()
        del tokens
        # Damage, not a rewrite: the shard's modification time stays (a rewrite in place stops the run with
        # its own message, tests/test_data_shard_rewritten_in_place.py).
        os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    dist.barrier()  # no rank reads before the modification time is back
    return fit(self)


loop.Trainer.fit = damaged_then_fit  # type: ignore[method-assign]
sys.exit(main(sys.argv[6:]))
