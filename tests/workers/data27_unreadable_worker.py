"""launch/train.py with one shard that becomes unreadable, or is deleted, mid-run: the faults of
tests/test_data27_shard_unreadable_midrun.py (a disk error, a network filesystem's stale handle after the file
was deleted on another node, a permission taken away on a server that checks it at each read; a person
cleaning up disk space).

Usage (each rank a plain process with torch's env:// variables):
    data27_unreadable_worker.py RANK SHARD READS MODE -- <launch/train.py options>
On rank RANK, after READS reads of the split whose first shard is SHARD: MODE "unreadable" makes the descriptor
the loader holds for SHARD unreadable (dup2 puts a write-only descriptor of the same file in its place, so the
loader's next pread of it fails in the kernel, EBADF, as a read of a file gone bad does, with no function of
ngpt_ds replaced); MODE "delete" deletes SHARD (os.unlink).
"""

import os
import sys
from pathlib import Path

from ngpt_ds.cli.train import main
from ngpt_ds.data import windows

rank, shard, reads, mode = int(sys.argv[1]), Path(sys.argv[2]).resolve(), int(sys.argv[3]), sys.argv[4]
assert mode in ("unreadable", "delete") and sys.argv[5] == "--"
read, done = windows.WindowIndex.read, {"reads": 0}


def read_then_break(self: windows.WindowIndex, window_ids):
    if int(os.environ["RANK"]) == rank and self.meta.shard_path(self._shards[0]).resolve() == shard:
        done["reads"] += 1
        if done["reads"] == reads + 1 and mode == "delete":
            os.unlink(shard)
        elif done["reads"] == reads + 1:
            fd = next(fd for fd in self._fds if fd is not None and Path(f"/proc/self/fd/{fd}").resolve() == shard)
            broken = os.open(shard, os.O_WRONLY)
            os.dup2(broken, fd)
            os.close(broken)
    return read(self, window_ids)


windows.WindowIndex.read = read_then_break  # type: ignore[method-assign]
sys.exit(main(sys.argv[6:]))
