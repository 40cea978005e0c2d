"""Worker for tests/test_preemption_phases.py: launch/train.py, SIGKILLed at one point of its run.

    python preemption_worker.py PHASE:N:RANKS launch/train.py's options...

The ranks in RANKS (comma-separated) SIGKILL themselves (no cleanup of any kind) the N-th time they reach
PHASE; the other ranks go on and meet the loss in their next collective:

  save-written    a save: DeepSpeed wrote its files, nothing hashed yet
  save-hashing    a save: hashing this rank's share of the files
  save-manifest   a save: rank 0 wrote the COMPLETE manifest, the folder still has its .tmp-save name
  eval            the start of an evaluation
"""

import os
import signal
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from ngpt_ds.train import checkpoint, loop  # noqa: E402

PHASE, AT, RANKS = sys.argv[1].split(":")
reached = 0


def point(name: str) -> None:
    global reached
    if name != PHASE or os.environ["RANK"] not in RANKS.split(","):
        return
    reached += 1
    if reached == int(AT):
        os.kill(os.getpid(), signal.SIGKILL)


def killed(owner: object, attribute: str, name: str, after: bool = False) -> None:
    original = getattr(owner, attribute)

    def wrapped(*args, **kwargs):
        if not after:
            point(name)
        result = original(*args, **kwargs)
        if after:
            point(name)
        return result

    setattr(owner, attribute, wrapped)


killed(checkpoint, "_hash_on_all_ranks", "save-written")
killed(checkpoint, "digests", "save-hashing")
killed(checkpoint, "write_manifest", "save-manifest", after=True)
killed(loop.Trainer, "evaluate", "eval")

if __name__ == "__main__":
    from ngpt_ds.cli.train import main

    sys.exit(main(sys.argv[2:]))
