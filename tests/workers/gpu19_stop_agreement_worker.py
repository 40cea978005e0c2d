"""One rank of a 2-rank gloo job that was asked to stop with 9 s of its grace left: does the save fit?

Rank 0's last save took 10 s, rank 1's 8 s (rank 0 writes more: its own files and the run's records).
Each rank writes what StopRequest.agree_to_save answered, the agreed numbers and the message of a stop
without a save to OUT/rankN.json. Usage: gpu19_stop_agreement_worker.py OUT
"""

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ngpt_ds.train.stopping import StopRequest  # noqa: E402

GRACE_S, LEFT_S = 100.0, 9.0
LAST_SAVE_S = {0: 10.0, 1: 8.0}


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    stop = StopRequest(max_time_s=None, grace_s=GRACE_S)
    stop.last_save_s = LAST_SAVE_S[rank]
    stop._request("signal SIGTERM", urgent=True)
    stop.seconds_left = lambda: LEFT_S  # type: ignore[method-assign]  # exact: 9 s of the grace left on both
    saves = stop.agree_to_save("cpu")
    result = {"saves": saves, "time_left": stop.time_left, "message": stop.unsaved_message()}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    stop.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    sys.stdout.flush()
    os._exit(0)
