"""Fault: the check that a relative --out names one folder on every rank (out_shared._relative_elsewhere) called
os.path.abspath before its gather, and on a rank whose working directory was deleted (a job's scratch folder removed
by a cleanup while the ranks started) that raised FileNotFoundError on that rank alone: it ended on a traceback while
the other ranks waited in the gather (gloo: its lost peer; NCCL: train.dist_timeout_s). Now that rank's answer says
so, and every rank stops with the same one line naming the rank, its working directory and the fix.

A real 2-rank gloo job calls out_shared.not_shared as run_lock.lock_run does (rank 0 holding the lock file open),
--out relative, rank 1 in a working directory removed before the call."""

from __future__ import annotations

from conftest import run_ranks

RANK = r"""
import os, sys
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from ngpt_ds.distributed import exit_process
from ngpt_ds.train import out_shared

base = Path(sys.argv[1])
dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=60))
held = -1
if dist.get_rank() == 0:
    os.chdir(base)
    held = os.open("run/train.lock", os.O_RDWR)
else:
    (base / "gone").mkdir()
    os.chdir(base / "gone")
    os.rmdir(base / "gone")  # removed while this rank runs in it
print("answer:", out_shared.not_shared(Path("run"), "train.lock", held), flush=True)
dist.destroy_process_group()
exit_process(0, joined=True)
"""


def test_a_rank_whose_working_directory_was_removed_stops_every_rank_with_one_line(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train.lock").write_text("host=node0 pid=1\n")
    codes, outputs = run_ranks(["-c", RANK, tmp_path], timeout=120)
    # old code: rank 1 exit 1 on "FileNotFoundError: [Errno 2] No such file or directory", rank 0 on gloo's lost peer
    assert codes == [0, 0], outputs
    answers = [[line for line in text.splitlines() if line.startswith("answer:")] for text in outputs]
    expected = (
        "answer: --out run is a relative path, and rank 1's working directory cannot be read (No such file or "
        "directory: removed while the rank ran in it?), so it names no folder there. Pass an absolute --out"
    )
    assert answers == [[expected], [expected]], outputs
    assert "Traceback" not in outputs[0] + outputs[1], outputs
