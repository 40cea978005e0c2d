"""Worker for tests/test_dry_run_resume_named.py: the checkpoint the trainer's ranks choose for
`--resume RESUME` (ngpt_ds.train.resume.resolve_resume_on_all_ranks).

    torchrun --nproc_per_node N resume_named_worker.py OUT RESUME
"""

import sys
from pathlib import Path

import torch.distributed as dist

from ngpt_ds.train import resume


def main() -> None:
    out, chosen_by = Path(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo")
    chosen = resume.resolve_resume_on_all_ranks(out, chosen_by, warn=lambda line: None)
    print(f"rank {dist.get_rank()} chose: {chosen.name if chosen else None}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    from ngpt_ds.distributed import exit_process

    exit_process(0, joined=True)  # without interpreter teardown while gloo threads may run
