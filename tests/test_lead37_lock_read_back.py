"""Fault: rank 0 reads the run lock it holds back through its own descriptor (ngpt_ds.train.out_shared.not_shared,
the startup check that --out is one folder on every node) just before a gather every rank makes. Where that read
failed (EIO from a network filesystem's server), rank 0 ended alone on the OSError while the other ranks waited in the
gather: on gloo they died of the lost peer, under NCCL they would wait out train.dist_timeout_s. Now rank 0's failure
is its answer in the gather, and every rank stops with the same line naming the lock file and --out.

A real 2-rank gloo job calls not_shared with rank 0 holding the lock file open and its pread failing (EIO)."""

from __future__ import annotations

from conftest import run_ranks

RANK = r"""
import errno, os, sys
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from ngpt_ds.distributed import exit_process
from ngpt_ds.train import out_shared

out = Path(sys.argv[1])
dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=60))
held = -1
if dist.get_rank() == 0:
    held = os.open(out / "train.lock", os.O_RDWR)

    def failing_pread(fd, size, offset):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    out_shared.os.pread = failing_pread  # the server's error on this one read; the other rank reads the file
print("answer:", out_shared.not_shared(out, "train.lock", held), flush=True)
dist.destroy_process_group()
exit_process(0, joined=True)
"""


def test_a_lock_rank_0_cannot_read_back_stops_every_rank_with_one_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train.lock").write_text("host=node0 pid=1\n")
    codes, outputs = run_ranks(["-c", RANK, out], timeout=120)
    # old code: rank 0 exit 1 on "OSError: [Errno 5] Input/output error", rank 1 on gloo's lost peer ([1, 1])
    assert codes == [0, 0], outputs
    answers = [[line for line in text.splitlines() if line.startswith("answer:")] for text in outputs]
    expected = (
        f"answer: --out {out}: rank 0 cannot read back the train.lock it holds there (<Input/output error>): check "
        "the filesystem under --out (its server, the disk) and start the run again"
    )
    assert answers == [[expected], [expected]], outputs
