"""--max-time stops early enough that the last step and its save end before the limit: at the step boundary where
now + the recent step time + the save estimate would pass it (ngpt_ds/train/stopping.py, README "Preemption, time
limits and lost ranks")."""

import json
import sys
import time

import pytest

from ngpt_ds.train import stopping

from conftest import REPO, cpu_env, run, tiny_ngpt, tiny_train, torchrun, train_flags, write_ds_config, write_yaml

LIMIT_S = 60.0
"""--max-time of the end-to-end run: well past the startup of a tiny run (imports, engine: 10-20 s here)."""
SAVE_S = 2.0
"""Each save of that run takes this long (padded by the worker): a save of a large model, in little."""
STEP_SLEEP_S = 0.2
"""And each step this much longer than the tiny model's own step."""

WORKER = """
import json, os, runpy, sys, time
import psutil
os.environ.setdefault("DS_ACCELERATOR", "cpu")
from ngpt_ds.train import loop

RECORDS, SAVE_S, STEP_SLEEP_S = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
del sys.argv[1:4]
real_save, real_step = loop.Trainer.save, loop.Trainer.train_step


def note(**record):
    with open(RECORDS, "a") as f:
        f.write(json.dumps(record) + "\\n")


def save(self):  # a slow save: padded to SAVE_S; its end, as this process's clock tells it
    start = time.monotonic()
    path = real_save(self)
    time.sleep(max(0.0, SAVE_S - (time.monotonic() - start)))
    note(step=self.step, save_s=time.monotonic() - start, saved_at=time.time())
    return path


def train_step(self):  # a slower step: the sleep before it, so nothing is added after the stop's boundary
    time.sleep(STEP_SLEEP_S)
    return real_step(self)


loop.Trainer.save, loop.Trainer.train_step = save, train_step
note(started_at=psutil.Process().create_time())
sys.argv[0] = os.path.join(os.environ["REPO"], "launch", "train.py")
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_the_last_save_ends_before_the_max_time_limit(tmp_path, tiny_dataset):
    """Fault: --max-time was checked at step boundaries against the limit itself, so the step that started just
    before it, and then its save, ran past it by up to a step and a save: a job given its allocation's time less
    a margin shorter than that was killed mid-save. With saves of 2 s, the old code's last save ended about 2 s
    after the limit (the checkpoint_saved_at assertion below fails on it). Now the run stops where one more step
    and its save would pass the limit: its last save ends before rank start + --max-time, on the process's own
    clock."""
    worker = tmp_path / "slow_save_worker.py"
    worker.write_text(WORKER)
    records = tmp_path / "records.jsonl"
    config = write_yaml(
        tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(100000, checkpoint_interval=10, log_interval=10)
    )
    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=4, accum=1)
    out = tmp_path / "run"
    flags = train_flags(config, ds, tiny_dataset, out)
    cmd = [sys.executable, worker, records, SAVE_S, STEP_SLEEP_S, *flags, "--max-time", LIMIT_S]
    proc = run([str(c) for c in cmd], env=cpu_env(REPO=REPO), timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]

    lines = [json.loads(line) for line in records.read_text().splitlines()]
    started_at = lines[0]["started_at"]
    saves = lines[1:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped"
    assert summary["step"] == saves[-1]["step"]  # the stop's checkpoint is the last save
    assert len(saves) >= 2 and all(s["save_s"] == pytest.approx(SAVE_S, abs=0.05) for s in saves[:-1])  # one timed

    limit = started_at + LIMIT_S
    assert saves[-1]["saved_at"] < limit, (saves[-1]["saved_at"] - limit, proc.stdout[-2000:])  # old code: +2.x s

    record = summary["max_time"]
    assert record["limit_s"] == LIMIT_S
    assert record["started_at"] == pytest.approx(started_at, abs=0.02)  # the same start (psutil's)
    assert record["checkpoint_saved_at"] == pytest.approx(saves[-1]["saved_at"], abs=0.1)
    assert record["checkpoint_saved_at"] < limit
    early = record["stopped_early_s"]
    # At a step boundary: the save's time and less than a step more. Right after a periodic save (this checkpoint
    # is the stop's): less than a step and a save. Either way not a stop far ahead of the limit.
    assert 0 < early < SAVE_S + 2.0
    text = f"--max-time: stopping {early:.1f} s early so that the last step and its save end before the limit"
    assert text in proc.stdout + proc.stderr


def test_the_margin_is_the_longest_recent_step_and_the_slowest_save(handlers):
    """The numbers the boundary compares: the longest of the last 8 step times, plus the slowest rank's last save
    (this rank's own when longer); before any save, 60 s or a tenth of --max-time, whichever is less."""
    request = stopping.StopRequest(100.0)
    assert request.max_time_margin_s() == 10.0  # no step yet, the guess: 100 s / 10
    assert stopping.StopRequest(3600.0).max_time_margin_s() == 60.0
    request._step_times.extend([9.0] + [0.5] * 7 + [1.25, 0.75])  # 9 s is more than 8 steps ago
    request.last_stop_path_s, request.job_save_s = 2.0, 3.5
    assert request.max_time_margin_s() == 1.25 + 3.5
    request.last_stop_path_s = 4.0
    assert request.max_time_margin_s() == 1.25 + 4.0


def test_a_boundary_within_the_margin_stops_early_and_says_so(handlers):
    """One more step and its save would pass the limit: a stop request, and how early; outside the margin, none."""
    request = stopping.StopRequest(1000.0)
    request._step_times.append(1.0)
    request.job_save_s = request.last_stop_path_s = 5.0
    request.deadline = time.monotonic() + 100.0
    assert not request.requested() and request.reason is None and request.early_s is None
    request.deadline = time.monotonic() + 5.5
    assert request.requested()
    assert 5.4 < request.early_s <= 5.5
    assert request.reason == (
        f"--max-time: stopping {request.early_s:.1f} s early so that the last step and its save end before the limit"
    )
    assert request.max_time_record()["stopped_early_s"] == request.early_s
    assert stopping.StopRequest(None).max_time_record() is None


AGREEMENT_WORKER = """
import json, os, sys, time
import torch.distributed as dist
from ngpt_ds.train.stopping import StopRequest

dist.init_process_group("gloo")
rank = dist.get_rank()
stop = StopRequest(max_time_s=1000.0)
stop._step_times.append(0.5)
stop.last_stop_path_s = {0: 1.0, 1: 6.0}[rank]  # rank 1 writes more (its files and the run's records, say)
stop.deadline = time.monotonic() + 100.0
first = stop.agreed("cpu")  # after a periodic save: no stop yet, and the slowest save is agreed
job_save_s = stop.job_save_s
# 5 s left on rank 0: enough for its own save (1 s) and a step, not for the job's (6 s); rank 1 has 100 s.
stop.deadline = time.monotonic() + (5.0 if rank == 0 else 100.0)
second = stop.agreed("cpu")
result = {"first": first, "job_save_s": job_save_s, "second": second, "reason": stop.reason}
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump(result, f)
stop.close()
dist.destroy_process_group()
from ngpt_ds.distributed import exit_process

exit_process(0, joined=True)  # no interpreter teardown under gloo's threads (its docstring)
"""


def test_every_rank_takes_the_slowest_ranks_save_for_its_margin(tmp_path):
    """A real 2-rank gloo job: after a save, the agreement also agrees on the slowest rank's save (6 s), so rank 0,
    whose own save took 1 s, keeps 6.5 s free before its limit: with 5 s left it stops both ranks. Its own save
    alone would have let it start a step whose save (the job's, as long as the slowest rank's) ends 1.5 s past
    its limit."""
    worker = tmp_path / "agreement_worker.py"
    worker.write_text(AGREEMENT_WORKER)
    torchrun(worker, tmp_path, timeout=120)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["first"] for r in ranks] == [False, False]
    assert [r["job_save_s"] for r in ranks] == [6.0, 6.0]
    assert [r["second"] for r in ranks] == [True, True]
    assert ranks[0]["reason"].startswith("--max-time: stopping 5.0 s early so that")
    assert ranks[1]["reason"] is None  # told by rank 0, through the all-reduce
