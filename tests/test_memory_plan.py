"""The dry run's memory estimate against what DeepSpeed really allocates."""

import json

import pytest

from conftest import REPO, torchrun


@pytest.fixture(scope="module")
def optimizer_state(tmp_path_factory):
    out = tmp_path_factory.mktemp("memory_plan") / "held.json"
    torchrun(REPO / "tests/workers/memory_plan_worker.py", out, nproc=1)
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", ["fp32 zero0", "fp32 zero1", "fp32 zero2", "fp32 zero3", "bf16 zero0", "bf16 zero2"])
def test_optimizer_state_estimate_counts_the_fp32_master_copy_deepspeed_keeps(optimizer_state, case):
    """In fp32 only ZeRO 0 steps the model's own parameters; ZeRO 1-3 clone them into an fp32 master. The estimate
    left the copy out there (8 bytes per parameter where DeepSpeed held 12)."""
    record = optimizer_state[case]
    assert record["estimated"] == record["held"]
