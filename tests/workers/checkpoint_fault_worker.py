"""Worker for tests/test_checkpoint_faults.py: saves and resume choices through
ngpt_ds.train.checkpoint and ngpt_ds.train.resume with the stand-in engine of checkpoint_save_worker.py.

    torchrun --nproc_per_node N checkpoint_fault_worker.py OUT ACTION STEP PAYLOAD_BYTE

ACTION:
  save                  one save of STEP; each rank prints what it got
  save-seal-fails       one save of STEP in which rank 0's listing of the new folder raises a
                        RecursionError (not an OSError); each rank prints what it got
  save-killed-swapping  a second save of STEP by the process that saved it, SIGKILLed (by itself, so nothing is cleaned up) right
                        after the old step_N was moved aside and before the new one took its name
  resume                every rank prints the checkpoint `resolve_resume_on_all_ranks(OUT, "auto")` chose
"""

import os
import signal
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from checkpoint_save_worker import report, save_and_report  # noqa: E402

from ngpt_ds.train import checkpoint, resume  # noqa: E402


def main() -> None:
    out, action, step, payload = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if action == "save-seal-fails" and rank == 0:

        def deep_listing(folder: Path) -> dict[str, int]:
            raise RecursionError("maximum recursion depth exceeded")

        checkpoint.file_sizes = deep_listing  # what rank 0 calls to list the new folder
    if action == "save-killed-swapping":
        # A second save of a step this process placed (the trainer's saves are of steps above the one it resumed
        # from): its own step_N goes to step_N.tmp-replaced, which a restart puts back. Any other step_N there is
        # someone's copy, renamed straight to step_N.not-this-run-<time>.
        checkpoint.mark_written(out / checkpoint.CHECKPOINTS / checkpoint.tag_for(step))
        rename = os.rename

        def killed_after_moving_aside(src, dst):
            rename(src, dst)
            if str(dst).endswith(checkpoint.REPLACED_SUFFIX):
                os.kill(os.getpid(), signal.SIGKILL)

        os.rename = killed_after_moving_aside
    if action == "resume":
        chosen = resume.resolve_resume_on_all_ranks(out, "auto", warn=lambda line: None)
        report(f"rank {rank} chose: {chosen.name if chosen else None}")
    else:
        save_and_report(out, step, payload)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    from ngpt_ds.distributed import exit_process

    exit_process(0, joined=True)  # without interpreter teardown while gloo threads may run
