"""Worker for tests/test_preemption_latest.py: saves through ngpt_ds.train.checkpoint with the stand-in
engine of checkpoint_save_worker.py, and the trainer's startup choice of a checkpoint.

    torchrun --nproc_per_node N preemption_latest_worker.py OUT ACTION STEP

ACTION:
  save                   one save of STEP
  save-killed-in-place   one save of STEP, SIGKILLed (by itself: no cleanup of any kind) once step_N is in
                         place, before DeepSpeed's `latest` file names it
  resume                 every rank prints the checkpoint `resolve_resume_on_all_ranks(OUT, "auto")` chose
"""

import os
import signal
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from checkpoint_save_worker import StandInEngine, report  # noqa: E402

from ngpt_ds.train import checkpoint, resume  # noqa: E402


def main() -> None:
    out, action, step = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if action == "save-killed-in-place":

        def killed(checkpoint_dir: Path) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        checkpoint.point_latest = killed  # rank 0 calls it right after renaming step_N into place
    if action == "resume":
        chosen = resume.resolve_resume_on_all_ranks(out, "auto", warn=report)
        report(f"rank {rank} chose: {chosen.name if chosen else None}")
    else:
        path = checkpoint.save(StandInEngine(b"A", None), out, step, {}, keep=5, config_yaml="model: {}\n")
        report(f"rank {rank} saved: {path.name}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    from ngpt_ds.distributed import exit_process

    exit_process(0, joined=True)  # without interpreter teardown while gloo threads may run
