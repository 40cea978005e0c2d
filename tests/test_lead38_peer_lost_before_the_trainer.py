"""A rank lost (SIGKILL: the out-of-memory killer, a failed node) in the job's agreements after the process group
formed and before the trainer starts (the dataset check, the run's lock) is one line on rank 0, not gloo's traceback.

The fault (rdvb38's reading of job.py, session 38): startup_peers.peers_watched turned a lost peer into one line only
around the trainer's own startup (loop.Trainer); the agreements job.train makes before it were unwatched, and rank 0
ended on a traceback from gloo ('Connection closed by peer') in the first collective after the kill.
The resume choice (session 39, dup39's re-reading of eb548e8): its `except Exception`, meant for one rank's own read
error, logged a lost peer's gloo error with its 25-line traceback ('rank 0: choosing the checkpoint to resume failed')
before the one line.
"""

import pytest

from conftest import run_ranks, tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml

WORKER = """
import os, signal, sys
os.environ.setdefault("DS_ACCELERATOR", "cpu")
from ngpt_ds.train import job

WHEN = sys.argv.pop(1)
NAME = {"dataset": "same_dataset_on_every_rank", "lock": "lock_run", "resume": "choose_resume"}[WHEN]
real = getattr(job, NAME)


def killed_on_rank_1(*args, **kwargs):
    if os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)


setattr(job, NAME, killed_on_rank_1)
from ngpt_ds.cli.train import main

sys.exit(main(sys.argv[1:]))
"""

DIED = (
    "error: rank 0: another rank of the job died during the startup (its connection closed while the ranks started "
    "together): nothing was trained. Read the other ranks' logs for why (an error, the out-of-memory killer, a node "
    "that failed), fix that and start the job again; it resumes from its newest checkpoint"
)


@pytest.mark.parametrize("when", ["dataset", "lock", "resume"])
def test_a_peer_killed_before_the_trainer_is_one_line_on_rank_0(tmp_path, tiny_dataset, when):
    worker = tmp_path / "killed_worker.py"
    worker.write_text(WORKER)
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(2, dist_timeout_s=20))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    codes, outputs = run_ranks([worker, when, *train_flags(config, ds, tiny_dataset, tmp_path / "run")])
    # old code: rank 0 'Traceback (most recent call last)' ... 'Connection closed by peer', exit 1
    assert codes == [1, -9], outputs[0][-4000:]
    assert "Traceback" not in outputs[0], outputs[0][-4000:]
    assert [line for line in outputs[0].splitlines() if line.startswith("error:")] == [DIED], outputs[0][-4000:]
