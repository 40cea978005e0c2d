"""DeepSpeed's step timers (wall_clock_breakdown, the flops profiler) with pipeline parallelism: refused at startup."""

from __future__ import annotations

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.ds_config import check_ds_config

BASE = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 1}}
WHY = (
    "DeepSpeed's step timers fail under pipeline parallelism (train.pipeline_parallel_size = 2: 'bwd_microstep timer "
    "has already been started' at the first backward); remove it"
)


def check(config: dict, pipeline: int):
    return check_ds_config(
        config,
        world_size=2,
        tensor_parallel=1,
        pipeline_parallel=pipeline,
        source="x.json",
        fp16_supported=False,
        bf16_supported=True,
    )


@pytest.mark.parametrize(
    "extra, line",
    [
        (
            {"flops_profiler": {"enabled": True, "profile_step": 1}},
            "flops_profiler.enabled = True: "
            + WHY
            + ": the trainer's log lines give MFU, and bench/mfu.py measures FLOPs per token and MFU",
        ),
        (
            {"wall_clock_breakdown": True},
            "wall_clock_breakdown = True: " + WHY + ": the trainer's log lines give the step time (ms/step)",
        ),
    ],
)
def test_step_timers_under_pipeline_parallelism_are_refused_before_the_engine(extra, line):
    """Fault: "flops_profiler": {"enabled": true} (or "wall_clock_breakdown": true) with train.pipeline_parallel_size
    2 passed the startup checks, then every rank stopped at the first backward in DeepSpeed's "AssertionError:
    bwd_microstep timer has already been started" traceback (seen on 2 CPU ranks, ZeRO 1, DeepSpeed 0.19.8). Now:
    refused at startup, naming the key, why, and where MFU and step times are found instead."""
    with pytest.raises(NgptConfigError) as err:
        check({**BASE, **extra}, pipeline=2)
    assert str(err.value) == f"DeepSpeed config x.json: 1 problem\n  - {line}"


def test_step_timers_without_a_pipeline_and_a_disabled_profiler_with_one_pass():
    plan = check({**BASE, "flops_profiler": {"enabled": True}, "wall_clock_breakdown": True}, pipeline=1)
    assert (plan.micro_batch, plan.data_parallel) == (2, 2)
    plan = check({**BASE, "flops_profiler": {"enabled": False}, "wall_clock_breakdown": False}, pipeline=2)
    assert (plan.micro_batch, plan.data_parallel) == (2, 1)
