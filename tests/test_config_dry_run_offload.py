"""The dry run reads the DeepSpeed JSON's offload block as the run does (ngpt_ds.train.dry_run.plan_report)."""

import json

import pytest

from ngpt_ds.train.builder import TrainOptions
from ngpt_ds.train.dry_run import dry_run

from conftest import tiny_ngpt, tiny_train, write_yaml


@pytest.mark.parametrize(
    "zero, deepspeed, optimizer",
    [
        ({"stage": 2, "offload_optimizer": None}, "", "optimizer state 0.00 GiB"),
        (
            {"stage": 2, "offload_optimizer": {"device": "cpu"}},
            ", optimizer offloaded to the CPU",
            "optimizer state 0.00 GiB (on the CPU: ZeRO-Offload)",
        ),
    ],
)
def test_the_dry_run_plans_a_json_whose_offload_block_is_null(tmp_path, tiny_dataset, zero, deepspeed, optimizer):
    """Fault: `"offload_optimizer": null` (DeepSpeed's own default, no offload), which the run accepts and trains
    with, stopped `--dry-run` in an AttributeError traceback ('NoneType' object has no attribute 'get')."""
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 2, "zero_optimization": zero}))
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(3))
    options = TrainOptions(
        config=str(config), deepspeed_config=str(ds), data=str(tiny_dataset), out=str(tmp_path / "out"), world_size=1
    )
    lines = dry_run(options).splitlines()
    assert lines[5] == (
        f"deepspeed ({ds}): ZeRO 2, fp32, gradient clipping 1.0{deepspeed}; activation checkpointing none; compile off"
    )
    assert [line for line in lines if line.startswith("  weights ")] == [
        f"  weights 0.00 GiB | gradients 0.00 GiB | {optimizer}"
    ]
