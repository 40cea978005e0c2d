"""launch/train.py with one shard that becomes unreadable mid-run on one rank: the fault of
tests/test_data27_shard_unreadable_midrun.py (a disk error, a network filesystem's stale handle after the file
was deleted on another node, a permission taken away on a server that checks it at each read).

Usage (each rank a plain process with torch's env:// variables):
    data27_unreadable_worker.py RANK SHARD READS -- <launch/train.py options>
On rank RANK, after READS reads of the split whose first shard is SHARD, the descriptor the loader holds for
SHARD is made unreadable: dup2 puts a write-only descriptor of the same file in its place, so the loader's next
pread of it fails in the kernel (EBADF), as a read of a file gone bad does, with no function of ngpt_ds replaced.
"""

import os
import sys
from pathlib import Path

from ngpt_ds.cli.train import main
from ngpt_ds.data import windows

rank, shard, reads = int(sys.argv[1]), Path(sys.argv[2]).resolve(), int(sys.argv[3])
assert sys.argv[4] == "--"
read, done = windows.WindowIndex.read, {"reads": 0}


def read_then_break(self: windows.WindowIndex, window_ids):
    if int(os.environ["RANK"]) == rank and self.meta.shard_path(self._shards[0]).resolve() == shard:
        done["reads"] += 1
        if done["reads"] == reads + 1:
            fd = next(fd for fd in self._fds if fd is not None and Path(f"/proc/self/fd/{fd}").resolve() == shard)
            broken = os.open(shard, os.O_WRONLY)
            os.dup2(broken, fd)
            os.close(broken)
    return read(self, window_ids)


windows.WindowIndex.read = read_then_break  # type: ignore[method-assign]
sys.exit(main(sys.argv[5:]))
