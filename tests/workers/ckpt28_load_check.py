"""Two ranks run the load check of a checkpoint (ngpt_ds.train.checkpoint_files.check_files_on_all_ranks),
recording each file safe_load.check unpickles on each rank. Rank 0 writes every rank's answer as JSON.

    torchrun --nproc_per_node 2 ckpt28_load_check.py OUT_JSON CHECKPOINT
"""

import sys

import torch.distributed as dist
from common import every_rank, run_worker


def check(folder: str) -> list[dict]:
    from pathlib import Path

    from ngpt_ds import safe_load
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.train.checkpoint_files import check_files_on_all_ranks

    loaded: list[str] = []
    real_check = safe_load.check

    def recording(path):
        loaded.append(str(path))
        return real_check(path)

    safe_load.check = recording
    mine = {"rank": dist.get_rank(), "loaded": loaded, "error": None}
    try:
        check_files_on_all_ranks(Path(folder), "cpu")
    except NgptConfigError as err:
        mine["error"] = str(err)
    return every_rank(mine)


if __name__ == "__main__":
    run_worker(sys.argv[1], lambda: check(sys.argv[2]), timeout_s=60)
