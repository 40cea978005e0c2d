"""scale23's two DeepSpeed refusals, checked where a user meets them: launch/train.py on 2 gloo ranks.

Faults (DeepSpeed 0.19.8, 2 CPU ranks, tiny nGPT):
- `zero_optimization.stage3_module_granularity_threshold` at or above the model's granularity made the model
  one ZeRO 3 leaf, and every rank stopped in the first backward with "RuntimeError: output with shape [1]
  doesn't match the broadcast shape [512, 32]" (exit 1, a traceback per rank).
- `gradient_predivide_factor` other than 1 at ZeRO 2 with DeepSpeed's default reduce_scatter passed the
  config checks, then every rank stopped in deepspeed.initialize with an AssertionError.
Now both are an `error:` line naming the field, each rank exiting 2, before any step."""

from __future__ import annotations

import json

from conftest import tiny_ngpt, tiny_train, train_run, write_ds_config, write_yaml


def _refused(tmp_path, tiny_dataset, **ds) -> str:
    config = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(2))
    stage = ds.pop("stage")
    zero = ds.pop("zero", {})
    path = write_ds_config(tmp_path / "ds.json", stage=stage, bf16=False, micro=4, accum=1, **ds)
    if zero:
        written = json.loads(path.read_text())
        written["zero_optimization"].update(zero)
        path.write_text(json.dumps(written))
    result = train_run(config, path, tiny_dataset, tmp_path / "run", nproc=2, check=False)
    # torchrun exits 1 and reports its ranks' exit codes (with its own traceback); none may fail inside DeepSpeed
    assert result.returncode == 1 and "(exitcode: 2)" in result.stderr, result.stderr[-3000:]
    assert "RuntimeError: output" not in result.stderr and "AssertionError:" not in result.stderr, result.stderr[-3000:]
    assert (
        not (tmp_path / "run" / "metrics.jsonl").exists()
        or "train/loss" not in (tmp_path / "run" / "metrics.jsonl").read_text()
    )
    return result.stderr


def test_a_granularity_threshold_making_the_model_one_leaf_stops_before_any_step(tmp_path, tiny_dataset):
    err = _refused(tmp_path, tiny_dataset, stage=3, zero={"stage3_module_granularity_threshold": 10**6})
    assert (
        "error: DeepSpeed config zero_optimization.stage3_module_granularity_threshold = 1000000 makes the whole "
        "model one ZeRO 3 leaf module (its granularity is 2384: 66752 parameters / 28 modules)"
    ) in err, err[-3000:]


def test_a_predivide_factor_deepspeed_asserts_on_is_named_at_startup(tmp_path, tiny_dataset):
    err = _refused(tmp_path, tiny_dataset, stage=2, gradient_predivide_factor=2.0)
    assert (
        "gradient_predivide_factor = 2.0: DeepSpeed does not support it at ZeRO stage 2 with reduce_scatter (its "
        'default) and stops in deepspeed.initialize: set "zero_optimization": {"reduce_scatter": false}, or remove it'
    ) in err, err[-3000:]
