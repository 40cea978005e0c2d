"""Sequence parallelism at ZeRO 3 with zero_quantized_gradients: refused at startup, since the trainer turns
reduce_scatter off there (for correct gradients) and DeepSpeed's quantized all-to-all reduction needs it."""

import json

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.parallel.sequence import deepspeed_config_for

from conftest import tiny_ngpt, tiny_train, torchrun, train_cmd, write_ds_config, write_yaml

MESSAGE = (
    "train.sequence_parallel_size = 2 with ZeRO 3: zero_optimization.zero_quantized_gradients needs "
    "reduce_scatter, which sequence parallelism turns off (DeepSpeed's ZeRO-3 reduce-scatter would make every "
    "update 2x too small); remove zero_quantized_gradients from the DeepSpeed config"
)


def test_quantized_gradients_under_sequence_parallel_zero3_are_refused():
    with pytest.raises(NgptConfigError) as err:
        deepspeed_config_for({"zero_optimization": {"stage": 3, "zero_quantized_gradients": True}}, 2)
    assert str(err.value) == MESSAGE
    for config, sp in (
        ({"zero_optimization": {"stage": 3, "zero_quantized_gradients": False}}, 2),
        ({"zero_optimization": {"stage": 2, "zero_quantized_gradients": True}}, 2),
        ({"zero_optimization": {"stage": 3, "zero_quantized_gradients": True}}, 1),
    ):
        deepspeed_config_for(config, sp)  # no refusal


def test_two_ranks_stop_at_startup_with_the_message_not_in_deepspeed_initialize(tmp_path, tiny_dataset):
    """Fault: every rank stopped in deepspeed.initialize with "AssertionError: when enable all_to_all_reduce,
    reduce_scatter should also be enabled for data type checks"."""
    config = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(2, sequence_parallel_size=2))
    ds = write_ds_config(tmp_path / "z3.json", stage=3, bf16=False, micro=4, accum=1)
    raw = json.loads(ds.read_text())
    raw["zero_optimization"]["zero_quantized_gradients"] = True
    ds.write_text(json.dumps(raw))
    proc = torchrun(*train_cmd(config, ds, tiny_dataset, tmp_path / "out"), nproc=2, check=False)
    assert proc.returncode != 0
    assert f"error: {MESSAGE}" in proc.stderr
    assert "AssertionError" not in proc.stderr + proc.stdout and "step " not in proc.stdout
