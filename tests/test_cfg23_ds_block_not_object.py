"""DeepSpeed JSON blocks that DeepSpeed reads as mappings, given as true, a number or null, and the flops profiler."""

from __future__ import annotations

import json
import sys

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.ds_config import check_ds_config

from conftest import REPO, run, tiny_ngpt, tiny_train, write_ds_config, write_yaml

BASE = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 0}}


@pytest.mark.parametrize(
    "key, value",
    [("flops_profiler", True), ("flops_profiler", None), ("checkpoint", 3), ("pipeline", True), ("timers", True)],
)
def test_a_block_given_as_a_value_is_named_as_one_to_write_as_an_object(key, value):
    """Fault: `"flops_profiler": true` (and the same for checkpoint, data_types, torch_autocast, pipeline, timers,
    ...) was reported as "DeepSpeed rejects it: AttributeError: 'bool' object has no attribute 'get'", a
    message about DeepSpeed's code, not the JSON. Now: the block is named as one to write as a JSON object."""
    with pytest.raises(NgptConfigError) as err:
        check_ds_config(
            {**BASE, key: value},
            world_size=1,
            tensor_parallel=1,
            source="x.json",
            fp16_supported=False,
            bf16_supported=True,
        )
    assert str(err.value) == (
        f'DeepSpeed config x.json: 1 problem\n  - {key} = {value!r}: must be a JSON object, e.g. {{"enabled": true}}'
    )


def test_a_string_field_given_a_number_keeps_deepspeeds_reason():
    """Only a mapping given as something else is called one: a string field keeps DeepSpeed's own message."""
    with pytest.raises(NgptConfigError) as err:
        check_ds_config(
            {**BASE, "gradient_allreduce_op": 3},
            world_size=1,
            tensor_parallel=1,
            source="x.json",
            fp16_supported=False,
            bf16_supported=True,
        )
    assert "must be a JSON object" not in str(err.value)
    assert "gradient_allreduce_op = 3: DeepSpeed rejects it: ValueError" in str(err.value)


def test_the_flops_profiler_block_trains_on_cpu(tmp_path, tiny_dataset):
    """`"flops_profiler": {"enabled": true, "profile_step": 1}` passes the startup checks and DeepSpeed's profiler
    prints its summary (DeepSpeed numbers it step 2) on a CPU run, counting the model's parameters."""
    from ngpt_ds.model import build_model
    from ngpt_ds.model.config import ModelConfig

    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(2))
    ds = write_ds_config(
        tmp_path / "fp.json", stage=0, bf16=False, micro=4, accum=1, flops_profiler={"enabled": True, "profile_step": 1}
    )
    assert json.loads(ds.read_text())["flops_profiler"] == {"enabled": True, "profile_step": 1}
    cmd = [REPO / "launch/train.py", "--config", config, "--deepspeed_config", ds, "--data", tiny_dataset]
    proc = run([sys.executable, *cmd, "--out", tmp_path / "out", "--no-progress"])
    assert "Profile Summary at step 2:" in proc.stdout
    params = sum(p.numel() for p in build_model(ModelConfig(**tiny_ngpt(), vocab_size=512).validate()).parameters())
    line = next(line for line in proc.stdout.splitlines() if line.startswith("params per GPU:"))
    assert line.split(":", 1)[1].strip() == f"{params / 1000:.2f} K"
