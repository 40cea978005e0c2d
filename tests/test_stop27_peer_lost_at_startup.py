"""A rank lost during the startup (its node failed, the OOM killer) after the process group formed: the others say so
in one line and exit non-zero, instead of a traceback of some 40 frames from gloo or the TCPStore deep inside
DeepSpeed's engine start (ngpt_ds/train/builder.py, `start_engine`)."""

import pytest

from conftest import run_ranks, tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml

WORKER = """
import os, signal, sys
os.environ.setdefault("DS_ACCELERATOR", "cpu")
from ngpt_ds.train import builder, loop

real_start = builder.start_engine


WHEN = sys.argv.pop(1)


def start_engine(*args, **kwargs):  # rank 1 dies as the engine starts, or once it started: the group had formed
    if os.environ["RANK"] == "1" and WHEN == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    engine = real_start(*args, **kwargs)
    if os.environ["RANK"] == "1" and WHEN == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return engine


loop.start_engine = start_engine
from ngpt_ds.cli.train import main

sys.exit(main(sys.argv[1:]))
"""


AFTER = (
    "nothing was trained. Read the other ranks' logs for why (an error, the out-of-memory killer, a node that failed), "
    "fix that and start the job again; it resumes from its newest checkpoint"
)
EXPECTED = {
    "after": "error: rank 0: another rank of the job died during the startup (its connection closed while the ranks "
    f"started together): {AFTER}",
    "before": "error: rank 0: another rank of the job stopped answering during the startup: this rank waited 20 s "
    "(train.dist_timeout_s) for it to join a group the ranks start together. It died or hangs: " + AFTER,
}


@pytest.mark.parametrize("when", ["after", "before"])
def test_a_peer_killed_during_the_startup_is_one_line_naming_this_rank_and_the_others_logs(
    tmp_path, tiny_dataset, when
):
    """Fault: rank 1 killed (SIGKILL) during the startup; rank 0 ended in a traceback of 16 to 21 frames: killed once
    its engine started, gloo's 'RuntimeError: ... Connection closed by peer' from the hypersphere hook's first
    all-reduce at once; killed as its engine started, 'torch.distributed.DistStoreError: wait timeout after 20000ms'
    from DeepSpeed's group creation after train.dist_timeout_s (20 s here; the wait is unchanged). Now rank 0 prints
    one `error:` line saying a peer rank died (or stopped answering) during the startup, with its own rank and the
    other ranks' logs to read, and exits 1. Old code: 'Traceback (most recent call last)' in rank 0's output."""
    worker = tmp_path / "killed_worker.py"
    worker.write_text(WORKER)
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(4, dist_timeout_s=20))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    flags = train_flags(config, ds, tiny_dataset, tmp_path / "run")
    codes, outputs = run_ranks([worker, when, *flags])
    assert codes == [1, -9], outputs[0][-4000:]
    assert "Traceback" not in outputs[0], outputs[0][-4000:]
    errors = [line for line in outputs[0].splitlines() if line.startswith("error:")]
    assert errors == [EXPECTED[when]], outputs[0][-4000:]
