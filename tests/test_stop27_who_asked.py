"""Every rank's stop line and summary.json name the rank that asked to stop and why, with that one rank's figures
(ngpt_ds/train/stopping.py `StopRequest.learn_who_asked`, ngpt_ds/train/stop_words.py): real gloo collectives, a
3-rank group for two ranks whose --max-time margins trip in the same step, 2-rank training jobs for a signal and a
--max-time limit that reach rank 1 only."""

import json
import subprocess
import sys

from conftest import (
    REPO,
    cpu_env,
    free_port,
    run_ranks,
    tiny_ngpt,
    tiny_train,
    train_flags,
    write_ds_config,
    write_yaml,
)

GROUP_WORKER = """
import json, os, sys
import torch.distributed as dist
from ngpt_ds.train import stopping

dist.init_process_group("gloo")
rank = dist.get_rank()
request = stopping.StopRequest(None)
if rank > 0:  # ranks 1 and 2: their margins tripped in the same step, each with its own figures
    early, limit, parts = {1: (4.0, 50.0, (1.5, 0.0, 2.5)), 2: (2.0, 80.0, (0.7, 3.0, 9.0))}[rank]
    request.max_time_s, request.early_s, request.margin_parts = limit, early, parts
    request.reason = f"--max-time: stopping {early:.1f} s early so that the last step and its save end before the limit"
request.agree_to_save("cpu")
print(json.dumps({"rank": rank, "line": request.describe(), "early": request.early_s}))
dist.destroy_process_group()
from ngpt_ds.distributed import exit_process

exit_process(0, joined=True)  # no interpreter teardown under gloo's threads (its docstring)
"""


def test_two_ranks_tripping_the_margin_in_one_step_give_rank0_one_ranks_figures(tmp_path):
    """Fault: ranks 1 and 2 tripped --max-time's margin in the same step; the maximum all-reduce took each figure
    separately, so rank 0 said 'rank 2 ... 4.0 s early ... 80 s ... step 1.5 s + its evaluation 3.0 s + the save
    9.0 s': no rank's figures. Now rank 0 reports rank 1's (the lowest rank that asked), all of them. Old code:
    '--max-time on rank 2: stopping 4.0 s early' in rank 0's line."""
    worker = tmp_path / "group_worker.py"
    worker.write_text(GROUP_WORKER)
    port, ranks = free_port(), []
    for rank in range(3):
        env = cpu_env(RANK=rank, WORLD_SIZE=3, MASTER_ADDR="127.0.0.1")
        env["MASTER_PORT"] = str(port)
        ranks.append(
            subprocess.Popen([sys.executable, str(worker)], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
        )
    lines = [json.loads(rank.communicate(timeout=120)[0].strip().splitlines()[-1]) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0, 0]
    assert lines[0] == {
        "rank": 0,
        "line": "--max-time on rank 1: stopping 4.0 s early so that the last step and its save end before its limit, "
        "50 s after its start; one more step would not fit: the longest recent step 1.5 s + the save 2.5 s",
        "early": 4.0,
    }
    assert lines[2]["line"].startswith("--max-time: stopping 2.0 s early") and lines[2]["early"] == 2.0  # its own


RUN_WORKER = """
import os, runpy, signal, sys
os.environ.setdefault("DS_ACCELERATOR", "cpu")
from ngpt_ds.train import loop, stopping

MODE = sys.argv.pop(1)
RANK = os.environ["RANK"]
real_step, real_init = loop.Trainer.train_step, stopping.StopRequest.__init__


def train_step(self):  # SIGUSR1 (Slurm's warning) to rank 1 alone, as its step 3 starts
    if MODE == "signal" and RANK == "1" and self.step == 2:
        os.kill(os.getpid(), signal.SIGUSR1)
    return real_step(self)


def init(self, max_time_s, *args, **kwargs):  # rank 1 alone gets --max-time 0: its limit passes in its first step
    real_init(self, 0.0 if MODE == "max-time" and RANK == "1" else max_time_s, *args, **kwargs)


loop.Trainer.train_step = train_step
stopping.StopRequest.__init__ = init
sys.argv[0] = os.path.join(os.environ["REPO"], "launch", "train.py")
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def rank1_stops(tmp_path, data, mode: str) -> tuple[list[int], list[str], dict]:
    """A 2-rank job (launch/train.py, 10 steps) in which only rank 1 asks to stop; (exit statuses, outputs,
    summary.json)."""
    worker = tmp_path / "run_worker.py"
    worker.write_text(RUN_WORKER)
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(10, checkpoint_interval=100))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    out = tmp_path / "run"
    flags = train_flags(config, ds, data, out)
    codes, outputs = run_ranks([worker, mode, *flags, "--log-all-ranks"], REPO=REPO)
    return codes, outputs, json.loads((out / "summary.json").read_text())


def stop_line(output: str, step: int) -> str:
    lines = [line for line in output.splitlines() if f"stopping at step {step} (" in line]
    assert len(lines) == 1, output[-3000:]
    return lines[0]


def test_a_signal_to_rank1_alone_is_named_on_rank0_with_its_rank(tmp_path, tiny_dataset):
    """Fault: SIGUSR1 reached rank 1 only (a scancel --signal to one step's task, a node's own warning); rank 0's stop
    line and summary.json said 'another rank was asked to stop'. Now: 'rank 1: signal SIGUSR1', and rank 1 names its
    own signal. Old code: "another rank was asked to stop" in rank 0's line (and no stopped_by in summary.json)."""
    codes, outputs, summary = rank1_stops(tmp_path, tiny_dataset, "signal")
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert (summary["status"], summary["step"]) == ("stopped", 3)
    assert "stopping at step 3 (rank 1: signal SIGUSR1); checkpoint saved in" in stop_line(outputs[0], 3)
    assert "stopping at step 3 (signal SIGUSR1); checkpoint saved in" in stop_line(outputs[1], 3)
    assert summary["stopped_by"] == "rank 1: signal SIGUSR1"
    assert "\n  stopped by:      rank 1: signal SIGUSR1\n" in outputs[0]  # again in the lines at the end


def test_max_time_reached_on_rank1_alone_is_named_on_rank0_with_its_limit(tmp_path, tiny_dataset):
    """Fault: rank 1's --max-time limit passed outright during a step (not its margin: a limit of 0, one step and its
    save on purpose); rank 0 said 'another rank was asked to stop'. Now: 'rank 1: --max-time reached, its limit 0 s
    after its start'. Old code: "another rank was asked to stop" in rank 0's line."""
    codes, outputs, summary = rank1_stops(tmp_path, tiny_dataset, "max-time")
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert (summary["status"], summary["step"]) == ("stopped", 1)
    words = "rank 1: --max-time reached, its limit 0 s after its start"
    assert f"stopping at step 1 ({words}); checkpoint saved in" in stop_line(outputs[0], 1)
    assert "stopping at step 1 (--max-time reached); checkpoint saved in" in stop_line(outputs[1], 1)
    assert summary["stopped_by"] == words
    assert "max_time" not in summary  # rank 0 ran without --max-time
