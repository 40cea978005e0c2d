"""Worker for tests/test_load38_*.py: one rank of launch/train.py with its collectives traced (nccl37_trace's
tracer), and one read of DeepSpeed's checkpoint load failing on one rank.

usage: load38_read_fault.py TRACE_DIR SCRIPT [SCRIPT's arguments...]

READ_FAULT, set on every rank, is RANK:FAULT:FILE: on rank RANK, DeepSpeed's read of the checkpoint file named FILE
(inside engine.load_checkpoint, after ngpt_ds's checks of the files have passed, COMPLETE still in place) fails:
- eio: OSError EIO (a disk or network filesystem error on one node);
- eacces: PermissionError (the file's mode or an ACL as one node sees it; the tests run as root, whom chmod 000 does
  not stop, so the open's refusal is raised here);
- truncated: the file is cut to half its size on disk, then read (a copy or a sync that rewrote it in place);
- memory: MemoryError (a host whose memory ran out while it read);
- bug: KeyError (an error no check words: a bug, in ngpt_ds or DeepSpeed).
"""

import errno
import os
from pathlib import Path

from nccl27_trace import run_traced
from nccl37_trace import install

READ_FAULT = "NGPT_DS_TEST_LOAD38_READ_FAULT"
FAULTS = ("eio", "eacces", "truncated", "memory", "bug")


def _fail_one_read(fault: str, name: str) -> None:
    """Wrap the torch.load that ngpt_ds.safe_load puts in place for DeepSpeed's reads (deepspeed_loads_are_safe), so
    that the checks before the load (checkpoint_files, shard_groups_check) read the file as it is."""
    from ngpt_ds import safe_load

    guarded = safe_load._guarded_torch_load

    def failing(f, *args, **kwargs):
        if Path(str(f)).name == name:
            if fault == "eio":
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(f))
            if fault == "eacces":
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(f))
            if fault == "memory":
                raise MemoryError()
            if fault == "bug":
                raise KeyError("a bug in the read of rank 1")  # the innermost frame of rank 1's traceback
            os.truncate(f, os.path.getsize(f) // 2)
        return guarded(f, *args, **kwargs)

    safe_load._guarded_torch_load = failing


def _install(trace: Path) -> None:
    install(trace)
    rank, fault, name = os.environ[READ_FAULT].split(":", 2)
    assert fault in FAULTS, fault
    if os.environ["RANK"] == rank:
        _fail_one_read(fault, name)


if __name__ == "__main__":
    run_traced(_install)
