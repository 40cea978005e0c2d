"""--max-time's margin before the first evaluation is timed: the evaluation due at the next step is estimated from its
batch count and the recent step time, on a real 2-rank gloo job (ngpt_ds/train/stopping.py `eval_in_steps`)."""

import json

from ngpt_ds.train import stopping

from conftest import REPO, run_ranks, tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml

WORKER = """
import json, os, runpy, sys, time
os.environ.setdefault("DS_ACCELERATOR", "cpu")
from ngpt_ds.train import loop, stopping

RECORDS, LIMIT_S, STEP_S = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
del sys.argv[1:4]
RANK = int(os.environ["RANK"])
real_save, real_eval, real_step = loop.Trainer.save, loop.Trainer.evaluate, loop.Trainer.train_step
real_begin = stopping.StopRequest.steps_begin


def note(**record):
    with open(RECORDS, "a") as f:
        f.write(json.dumps({"rank": RANK, **record}) + "\\n")


def steps_begin(self):  # the limit counts from the first step here, not from a startup of varying length
    real_begin(self)
    self.max_time_s, self.deadline = LIMIT_S, time.monotonic() + LIMIT_S
    note(kind="limit", at=time.time() + LIMIT_S)


def train_step(self):  # a step of STEP_S: a larger model's (one micro-batch a step)
    time.sleep(STEP_S)
    return real_step(self)


def evaluate(self):  # each validation batch a forward of a training micro-batch's time at most: STEP_S / 2
    result = real_eval(self)
    time.sleep(len(self.val_batches) * STEP_S / 2)
    note(kind="eval", step=self.step, at=time.time())
    return result


def save(self):
    path = real_save(self)
    note(kind="save", step=self.step, at=time.time())
    return path


stopping.StopRequest.steps_begin = steps_begin
loop.Trainer.train_step, loop.Trainer.evaluate, loop.Trainer.save = train_step, evaluate, save
sys.argv[0] = os.path.join(os.environ["REPO"], "launch", "train.py")
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_the_first_evaluation_due_before_the_limit_is_in_the_max_time_margin(tmp_path, tiny_dataset):
    """Fault: before the first evaluation was timed, the margin counted no evaluation. Here the first one (30 batches
    at 0.2 s: 6 s) is due at step 16, steps take 0.4 s, and the limit is 10 s after the first step: the margin (a step
    + the save's first guess, 1 s) let step 16 start at about 6.5 s, its evaluation ran to about 13 s, and its save
    ended past the limit (old code: 'rank 0: overrun 2.1 s'). Now the evaluation is estimated at its batch count times
    the recent step time (30 x 0.4 s = 12 s, an upper bound): the run stops at step 15, its save before the limit."""
    limit_s, step_s, eval_interval = 10.0, 0.4, 16
    worker = tmp_path / "first_eval_worker.py"
    worker.write_text(WORKER)
    records = tmp_path / "records.jsonl"
    train = tiny_train(1000, eval_interval=eval_interval, eval_batches=30, log_interval=100)
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), train)
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    out = tmp_path / "run"
    flags = train_flags(config, ds, tiny_dataset, out)
    flags += ["--max-time", 1000]  # replaced by limit_s once the steps begin (the worker's steps_begin)
    codes, outputs = run_ranks([worker, records, limit_s, step_s, *flags], REPO=REPO)
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    summary = json.loads((out / "summary.json").read_text())
    by_rank: dict[int, list[dict]] = {0: [], 1: []}
    for line in records.read_text().splitlines():
        record = json.loads(line)
        by_rank[record["rank"]].append(record)
    for rank, rank_records in by_rank.items():
        limit_at = next(r["at"] for r in rank_records if r["kind"] == "limit")
        saves = [r for r in rank_records if r["kind"] == "save"]
        assert saves and saves[-1]["step"] == summary["step"], rank_records
        overrun = saves[-1]["at"] - limit_at
        assert overrun < 0, f"rank {rank}: overrun {overrun:.1f} s\n{outputs[rank][-2000:]}"
    assert summary["status"] == "stopped" and summary["step"] == eval_interval - 1, summary


def test_the_first_evaluations_estimate_is_its_batches_at_the_step_time(handlers):
    """The numbers: longest step 1.25 s, an evaluation of 6 batches over 2 micro-batches a step (3 steps' worth),
    save 3.5 s: 1.25 + 3.75 + 3.5 = 8.5 s when the next step evaluates, 4.75 s when not; once an evaluation took 2 s,
    that figure. Old code: 4.75 s when the next step evaluates."""
    request = stopping.StopRequest(1000.0)
    request._step_times.extend([0.5, 1.25])
    request.job_save_s = 3.5
    request.eval_in_steps = 6 / 2
    request.next_step_evaluates = True
    assert request.max_time_margin_s() == 1.25 + 3.75 + 3.5
    request.next_step_evaluates = False
    assert request.max_time_margin_s() == 1.25 + 3.5
    request.eval_s, request.next_step_evaluates = 2.0, True
    assert request.max_time_margin_s() == 1.25 + 2.0 + 3.5
