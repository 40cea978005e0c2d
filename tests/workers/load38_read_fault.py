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

LISTING_FAULT, set on every rank, is FAULT:SIGNAL, for the listing of the checkpoint's *.pt files that the check
before the load makes (checkpoint_files.check_files_on_all_ranks):
- eio: rank 1's listing raises OSError EIO;
- deleted: rank 0 lists, then writes the file SIGNAL; rank 1 waits for it, removes the checkpoint folder (as the
  retention of another run that saves into that folder would, between two ranks' listings), then lists.
"""

import errno
import os
import shutil
import time
from pathlib import Path

from nccl27_trace import run_traced
from nccl37_trace import install

READ_FAULT = "NGPT_DS_TEST_LOAD38_READ_FAULT"
LISTING_FAULT = "NGPT_DS_TEST_LOAD38_LISTING_FAULT"
WAIT_S = 180  # a hang guard only
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


def _fail_the_listing(fault: str, signal: Path) -> None:
    rglob, rank = Path.rglob, os.environ["RANK"]

    def listing(self, pattern, *args, **kwargs):
        if pattern != "*.pt" or not self.name.startswith("step_"):
            return rglob(self, pattern, *args, **kwargs)
        if rank == "0":
            found = list(rglob(self, pattern, *args, **kwargs))
            signal.write_text("rank 0 listed the checkpoint")
            return iter(found)
        if fault == "eio":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(self))
        deadline = time.monotonic() + WAIT_S
        while not signal.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank 0 did not list the checkpoint in {WAIT_S} s")
            time.sleep(0.1)
        shutil.rmtree(self)
        return rglob(self, pattern, *args, **kwargs)

    Path.rglob = listing


def _install(trace: Path) -> None:
    install(trace)
    if os.environ.get(LISTING_FAULT):
        fault, signal = os.environ[LISTING_FAULT].split(":", 1)
        _fail_the_listing(fault, Path(signal))
        return
    rank, fault, name = os.environ[READ_FAULT].split(":", 2)
    assert fault in FAULTS, fault
    if os.environ["RANK"] == rank:
        _fail_one_read(fault, name)


if __name__ == "__main__":
    run_traced(_install)
