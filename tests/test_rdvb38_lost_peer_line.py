"""A rank that could not start gloo's threads after the process group had formed on rank 0 left its line in rank 0's
store (rendezvous_peers.tell_the_job) and ended: rank 0 ends on that line, not on a gloo traceback.

The fault: two plain ranks, rank 1 under `ulimit -u 5` (timing-dependent: about one start in a few). Rank 1's gloo
thread failed after rank 0's `init_process_group` had returned; rank 1 said its `ulimit -u` line, set it in rank 0's
store and exited 2, while rank 0, past the rendezvous (whose Listener would have heard the line), ended in its first
collective (agreement.stop_all_if_any_failed, ngpt_ds/train/job.py) on a 37-line traceback ending in gloo's
"RuntimeError: [.../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:P: Connection reset by peer" (or
"closed by peer"), exit 1, which startup_peers.peers_watched (the engine's startup) does not cover.

Here rank 1 is a stand-in that does deterministically what that rank did: it joins the group with the trainer's own
init_process_group, closes its gloo connections (the real rank's group was torn down as its error unwound), and a
second later sets its line in the store as rendezvous_failures.bounded_rendezvous does, and exits 2.
Rank 0 is the real trainer (launch/train.py)."""

from __future__ import annotations

import sys

from launching import rank_processes

from ngpt_ds import rendezvous_failures

from conftest import REPO, tiny_ngpt, tiny_train, train_flags, write_run_configs

LINE = "rank 1 could not start a thread for the job's rendezvous: (the stand-in's line)"

STAND_IN = f"""
import os, sys, time
import torch.distributed
from ngpt_ds import distributed
from ngpt_ds.rendezvous_peers import tell_the_job
from ngpt_ds.train.builder import init_process_group

dist_env = distributed.discover()
init_process_group(dist_env, 60)  # the group forms on rank 0 too
torch.distributed.destroy_process_group()  # gloo's connections close first, as the real rank's error unwinds
time.sleep(1)
tell_the_job(dist_env, {LINE!r}, time.monotonic() + 30, True)
sys.stderr.write("error: " + {LINE!r} + "\\n")
sys.stderr.flush()
os._exit(2)
"""


def test_rank_0_ends_on_the_line_of_a_rank_lost_after_the_group_formed(tiny_dataset, tmp_path):
    """Old code: rank 0's last line "RuntimeError: [...pair.cc:...] Read error [127.0.0.1]:P: Connection closed by
    peer ..." (or "reset by peer") after a traceback through job.py's stop_all_if_any_failed, exit 1. Now one line,
    rank 1's, as the ranks in the rendezvous say it (exit 1, rendezvous_failures.EXIT_CODE)."""
    files = write_run_configs(tmp_path, tiny_ngpt(), tiny_train(2, dist_timeout_s=60))
    rank0 = [
        sys.executable,
        REPO / "launch/train.py",
        *train_flags(files["yaml"], files["ds"], tiny_dataset, tmp_path / "run"),
    ]
    with rank_processes([rank0, [sys.executable, "-c", STAND_IN]], cwd=tmp_path) as procs:
        out = [proc.communicate(timeout=240) for proc in procs]
    (_, err0), (_, err1) = out
    assert procs[1].returncode == 2, err1[-3000:]
    assert err1.strip().splitlines()[-1] == f"error: {LINE}", err1[-3000:]
    assert err0.strip().splitlines()[-1] == f"error: rank 0 stops: {LINE}", err0[-3000:]
    assert "Traceback" not in err0, err0[-3000:]
    assert procs[0].returncode == rendezvous_failures.EXIT_CODE, err0[-3000:]
    assert not (tmp_path / "run" / "checkpoints").exists()
