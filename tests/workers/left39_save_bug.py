"""Worker for tests/test_left39_unknown_error_traceback.py: one rank of a 2-rank gloo job that saves through
ngpt_ds.train.checkpoint.save (the stand-in engine of checkpoint_save_worker.py), or makes the resume's repair of
a checkpoint moved aside (ngpt_ds.train.resume._restore_moved_aside), with a bug (a KeyError, raised by the frame
the test looks for) or a known failure (an OSError with its errno) planted at one point on one rank.

usage: left39_save_bug.py OUT POINT
POINT: seal (rank 0 lists the new folder), hash (rank 1 hashes its share), prepare (rank 0 prepares the folder),
finish (rank 0 renames into place), restore (rank 0 looks up what to verify before the repair), repair (rank 0
repairs), eio (rank 0 lists the new folder: EIO). Each rank prints the one line it got: 'rank R got: ...'.
"""

import errno
import os
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from checkpoint_save_worker import report, save_and_report  # noqa: E402

from ngpt_ds.distributed import exit_process  # noqa: E402
from ngpt_ds.errors import NgptConfigError  # noqa: E402
from ngpt_ds.train import checkpoint, resume  # noqa: E402

FAILING_RANK = {"hash": 1}


def bug(*args, **kwargs):
    raise KeyError("a bug planted by the test")  # the innermost frame the test looks for


def eio(*args, **kwargs):
    raise OSError(errno.EIO, os.strerror(errno.EIO), "planted")


PLANTED = {
    "seal": (checkpoint, "file_sizes", bug),
    "hash": (checkpoint, "digests", bug),
    "prepare": (checkpoint, "_before_save", bug),
    "finish": (checkpoint, "_finish_save", bug),
    "restore": (resume, "to_verify", bug),
    "repair": (resume, "recover_interrupted_saves", bug),
    "eio": (checkpoint, "file_sizes", eio),
}


def main() -> None:
    out, point = Path(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if rank == FAILING_RANK.get(point, 0):
        module, name, fault = PLANTED[point]
        setattr(module, name, fault)
    if point in ("restore", "repair"):
        try:
            resume._restore_moved_aside(out / checkpoint.CHECKPOINTS, warn=lambda line: None)
        except NgptConfigError as err:
            report(f"rank {rank} got: {err}")
        else:
            report(f"rank {rank} got: nothing")
    else:
        save_and_report(out, 4, "A")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_process(0, joined=True)  # without interpreter teardown while gloo threads may run
