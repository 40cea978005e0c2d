"""Coverage (left29), no fault found: a rank killed (SIGKILL) inside DeepSpeed's engine start, between or at its
collectives, leaves the survivor one `error:` line (ngpt_ds.train.startup_peers), not gloo's "Connection closed by
peer" / "reset by peer" traceback. tests/test_stop27_peer_lost_at_startup.py kills rank 1 as `start_engine` is
entered (the survivor waits on the TCPStore) and once it returned; here rank 1 dies inside deepspeed.initialize:
at its k-th torch.distributed collective (the model's broadcast; ZeRO 3's barrier and partition all-gathers), and
right after its ZeRO 2 optimizer was built. Real 2-rank gloo runs; the wrapper only picks the moment of the kill.
"""

import pytest

from conftest import run_ranks, tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml

WORKER = """
import os, signal, sys
os.environ.setdefault("DS_ACCELERATOR", "cpu")
import torch.distributed as dist
from ngpt_ds.train import builder, loop

WHEN = sys.argv.pop(1)  # "op:K" (rank 1's K-th collective inside start_engine) or "zero2-built"
OPS = ("new_group", "broadcast", "all_reduce", "all_gather", "all_gather_into_tensor", "barrier", "reduce_scatter_tensor")
inside, seen = [False], []


def die(what):
    print(f"rank 1 killed at {what}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def counted(name):
    real = getattr(dist, name)

    def op(*args, **kwargs):
        if inside[0] and os.environ["RANK"] == "1":
            seen.append(name)
            if WHEN == f"op:{len(seen) - 1}":
                die(f"collective {len(seen) - 1} ({name})")
        return real(*args, **kwargs)

    return op


for name in OPS:  # deepspeed.comm looks each up on torch.distributed at the call
    setattr(dist, name, counted(name))
if WHEN == "zero2-built" and os.environ["RANK"] == "1":
    from deepspeed.runtime.zero import stage_1_and_2

    real_init = stage_1_and_2.DeepSpeedZeroOptimizer.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        die("the end of the ZeRO 2 optimizer's construction")

    stage_1_and_2.DeepSpeedZeroOptimizer.__init__ = init
real_start = builder.start_engine


def start_engine(*args, **kwargs):
    inside[0] = True
    try:
        return real_start(*args, **kwargs)
    finally:
        inside[0] = False


loop.start_engine = start_engine
from ngpt_ds.cli.train import main

sys.exit(main(sys.argv[1:]))
"""

EXPECTED = (
    "error: rank 0: another rank of the job died during the startup (its connection closed while the ranks "
    "started together): nothing was trained. Read the other ranks' logs for why (an error, the out-of-memory killer, "
    "a node that failed), fix that and start the job again; it resumes from its newest checkpoint"
)


@pytest.mark.parametrize(
    "stage, when, killed_at",
    [
        (2, "op:1", "collective 1 (broadcast)"),  # the model's broadcast from rank 0 (collective 0 is a new group)
        (2, "zero2-built", "the end of the ZeRO 2 optimizer's construction"),
        (3, "op:50", "collective 50 (all_gather_into_tensor)"),  # ZeRO 3's partitioned parameters, gathered
    ],
)
def test_a_peer_killed_inside_deepspeed_initialize_is_one_line(tmp_path, tiny_dataset, stage, when, killed_at):
    worker = tmp_path / "killed_worker.py"
    worker.write_text(WORKER)
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(4, dist_timeout_s=20))
    ds = write_ds_config(tmp_path / f"z{stage}.json", stage=stage, bf16=False, micro=4, accum=1)
    codes, outputs = run_ranks([worker, when, *train_flags(config, ds, tiny_dataset, tmp_path / "run")])
    assert f"rank 1 killed at {killed_at}" in outputs[1], outputs[1][-3000:]
    assert codes == [1, -9], outputs[0][-4000:]
    assert "Traceback" not in outputs[0], outputs[0][-4000:]
    assert [line for line in outputs[0].splitlines() if line.startswith("error:")] == [EXPECTED], outputs[0][-4000:]
