"""Fault: a NaN (or inf) validation loss did not stop the run. Before: the loop logged eval/loss NaN, saved a
checkpoint of the broken weights at that step, trained on to max_steps and wrote summary.json "finished"
(exit 0). Now: the divergence rule of the training loss (ngpt_ds/train/divergence.py) applies to the
validation loss: TrainingDiverged (exit 2) naming the validation loss and its step, nothing saved at or after
that step, summary.json "diverged"."""

import json
import sys

import pytest

from conftest import REPO, run, tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml

# Runs launch/train.py with Trainer.evaluate returning `value` at step 4 (the real one otherwise): the loop's
# reaction to a non-finite validation loss, without having to break weights that still train finitely.
WRAPPER = """
import runpy, sys
from ngpt_ds.train.loop import Trainer
real, value = Trainer.evaluate, float(sys.argv.pop(2))
def evaluate(self):
    loss = real(self)
    return value if self.step == 4 else loss
Trainer.evaluate = evaluate
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_nan_validation_loss_stops_the_run_as_diverged(tmp_path, tiny_dataset, value):
    config = write_yaml(
        tmp_path / "c.yaml",
        tiny_ngpt(),
        tiny_train(8, eval_interval=2, checkpoint_interval=2),
    )
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=4, accum=1)
    out = tmp_path / "out"
    wrapper = tmp_path / "wrap.py"
    wrapper.write_text(WRAPPER)
    flags = train_flags(config, ds, tiny_dataset, out)
    proc = run([sys.executable, wrapper, REPO / "launch/train.py", value, *flags], check=False)

    assert proc.returncode == 2, proc.stderr[-3000:]  # old code: 0, trained to step 8
    error = proc.stderr.strip().splitlines()[-1]
    assert error == (
        f"error: the validation loss became {value} at step 4 (the training loss was finite); nothing was saved "
        "at or after it. Hints: lower train.lr (now 0.01), check the validation data. "
        f"Checkpoints up to step 2 are intact in {out / 'checkpoints'} (--resume auto continues from the "
        "newest, step_00000002)"
    ), error
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step_")) == ["step_00000002"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["step"], summary["val_loss"]) == ("diverged", 4, None)
    assert summary["checkpoint"].endswith("step_00000002")
