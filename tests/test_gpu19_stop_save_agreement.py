"""Whether a stopped job saves: every rank must give the same answer, or the ranks part in the save's collectives.

NCCL does not report ranks that call different collectives: the ones in the save wait for the missing rank
until train.dist_timeout_s (gloo: 'Connection closed by peer'). The worker runs 2 real gloo ranks.
"""

import json

from conftest import REPO, torchrun

WORKER = REPO / "tests/workers/gpu19_stop_agreement_worker.py"


def test_every_rank_gives_the_same_answer_from_the_slowest_ranks_last_save(tmp_path):
    """Fault: StopRequest.agree_to_save agreed on the time left (the minimum over the ranks) but compared it
    with each rank's own last save. With 9 s of the grace left, rank 0 (last save 10 s) answered 'no save'
    and stopped, rank 1 (8 s) answered 'save' and entered the save's collectives, where it waited for rank 0
    until train.dist_timeout_s on NCCL, a stop that ended in a timeout instead of 'stopped-unsaved'.
    Before: rank 0 False, rank 1 True. Now: the slowest rank's save is the job's estimate, and both answer
    False, with the same message."""
    torchrun(WORKER, tmp_path, timeout=120)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["saves"] for r in ranks] == [False, False]
    assert [r["time_left"] for r in ranks] == [9.0, 9.0]
    message = "no time left to save (train.stop_grace_s = 100, 9.0 s of it left, the last save took 10.0 s)"
    assert [r["message"] for r in ranks] == [message, message]
