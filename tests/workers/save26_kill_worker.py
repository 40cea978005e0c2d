"""Worker for tests/test_save26_interrupted_saves.py: saves through ngpt_ds.train.checkpoint with the stand-in
engine of checkpoint_save_worker.py, SIGKILLed (by the process itself, so nothing is cleaned up) at a chosen
rename of rank 0's `_finish_save`; and the start-up choice of `resolve_resume_on_all_ranks`.

    torchrun --nproc_per_node N save26_kill_worker.py OUT ACTION STEP PAYLOAD_BYTE

ACTION:
  save                     one save of STEP; each rank prints what it got
  save-killed-sealed       one save of STEP, killed once its manifest is written, before its folder is renamed
                           from step_N.tmp-save to step_N (a first save of the step)
  second-killed-sealed     a second save of STEP by the process that saved it, killed likewise (the old step_N
                           still in place)
  second-killed-between    a second save of STEP by the process that saved it, killed right after the old step_N
                           was moved aside to step_N.tmp-replaced, before the new folder took its name
  second-killed-after      a second save of STEP by the process that saved it, killed right after the new folder
                           took the name step_N (the old one left as step_N.tmp-replaced)
  resume                   every rank prints the checkpoint `resolve_resume_on_all_ranks(OUT, "auto")` chose and
                           rank 0 the warnings
"""

import os
import signal
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from checkpoint_save_worker import report, save_and_report  # noqa: E402

from ngpt_ds.train import checkpoint, resume  # noqa: E402


def kill_at(when) -> None:
    rename = os.rename

    def killing_rename(src, dst):
        if when(str(src), str(dst), before=True):
            os.kill(os.getpid(), signal.SIGKILL)
        rename(src, dst)
        if when(str(src), str(dst), before=False):
            os.kill(os.getpid(), signal.SIGKILL)

    os.rename = killing_rename


def main() -> None:
    out, action, step, payload = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    final = out / checkpoint.CHECKPOINTS / checkpoint.tag_for(step)
    if action.startswith("second-"):
        checkpoint.mark_written(final)  # a second save of a step this process placed
    if action in ("save-killed-sealed", "second-killed-sealed"):
        kill_at(lambda src, dst, before: before and src.endswith(checkpoint.TEMP_SUFFIX) and dst == str(final))
    if action == "second-killed-sealed":  # before the old step_N is moved aside, too
        kill_at(lambda src, dst, before: before and src == str(final))
    if action == "second-killed-between":
        kill_at(lambda src, dst, before: not before and dst.endswith(checkpoint.REPLACED_SUFFIX))
    if action == "second-killed-after":
        kill_at(lambda src, dst, before: not before and src.endswith(checkpoint.TEMP_SUFFIX) and dst == str(final))
    if action == "resume":
        warnings: list[str] = []
        chosen = resume.resolve_resume_on_all_ranks(out, "auto", warn=warnings.append)
        report(f"rank {rank} chose: {chosen.name if chosen else None}")
        if rank == 0:
            for line in warnings:
                report(f"rank 0 warned: {line}")
    else:
        save_and_report(out, step, payload)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    from ngpt_ds.distributed import exit_process

    exit_process(0, joined=True)  # without interpreter teardown while gloo threads may run
