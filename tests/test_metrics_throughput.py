"""throughput/step_time_s against each step's own duration: a real run whose first step is made 4 s slower
(a stand-in for torch.compile's minutes at the first step: a recorder around Trainer.train_step, written to
the test's folder, sleeps in the first call and times every call without the sleep)."""

import json
import sys

import pytest

from conftest import REPO, run, tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml

RECORDER = """
import json
import sys
import time
from ngpt_ds.train import loop

step_of_trainer, seconds = loop.Trainer.train_step, []


def train_step(self):
    if not seconds:
        time.sleep(4.0)  # the first step's compile
    start = time.perf_counter()
    try:
        return step_of_trainer(self)
    finally:
        seconds.append(time.perf_counter() - start)
        with open(sys.argv[1], "w") as f:
            json.dump(seconds, f)


loop.Trainer.train_step = train_step
from ngpt_ds.cli.train import main

sys.exit(main(sys.argv[2:]))
"""


def test_the_first_steps_warm_up_is_kept_out_of_the_logged_step_time(tmp_path, tiny_dataset):
    """Fault: the first record averaged the session's first step (compile, warm-up) into its interval: with a
    first step 4 s slower, step 2's record said ~2.2 s per step where step 2 took ~0.2 s, and tokens/s and MFU
    were ~10x low; a compiled run's first 75 s did the same to its first record. Now that record times the
    interval's other steps; the first step alone in its record (log_interval 1) is reported as it is."""
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER)
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(4, log_interval=2))
    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=2, accum=1)
    out = tmp_path / "run"
    args = train_flags(config, ds, tiny_dataset, out)
    run([sys.executable, recorder, tmp_path / "seconds.json", *args], cwd=REPO)
    seconds = json.loads((tmp_path / "seconds.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["throughput/step_time_s"] for r in records if "train/loss" in r}
    assert sorted(logged) == [2, 4] and len(seconds) == 4
    # Timed around the recorder's own timing: a few calls more, microseconds.
    assert logged[2] == pytest.approx(seconds[1], abs=5e-3)
    assert logged[4] == pytest.approx((seconds[2] + seconds[3]) / 2, abs=5e-3)
