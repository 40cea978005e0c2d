"""The hypersphere hook with what tests/test_hypersphere.py leaves out, on 2 real gloo ranks: gradient
accumulation 2, a clipping threshold every step exceeds, DeepSpeed's BF16_Optimizer, fp16, ZeRO-Offload,
and a resume from a checkpoint, with rows straddling the ZeRO cut (tests/workers/sphere_ranks_worker.py)."""

import json

import pytest

from conftest import REPO, torchrun

CASES = ["0:bf16:none", "1:bf16_fp32_accum:none", "2:fp16:offload", "3:bf16:none", "3:fp32:offload"]
OPTIMIZERS = {
    "0": "FP16_UnfusedOptimizer",
    "1": "BF16_Optimizer",
    "2": "DeepSpeedZeroOptimizer",
    "3": "DeepSpeedZeroOptimizer_Stage3",
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    work = tmp_path_factory.mktemp("sphere_ranks")
    torchrun(REPO / "tests/workers/sphere_ranks_worker.py", work / "results.json", work, ",".join(CASES))
    return {r["case"]: r for r in json.loads((work / "results.json").read_text())}


@pytest.mark.parametrize("case", CASES)
def test_masters_on_the_sphere_and_working_copy_their_cast_through_accumulation_clipping_and_resume(results, case):
    record = results[case]
    assert record["optimizer"] == OPTIMIZERS[case[0]]
    assert all(norm > 0.1 for norm in record["grad_norms"])  # above the clipping threshold 0.05
    assert [s["renormalized_units"] for s in record["steps"]] == [1] * 4  # once per step, not per micro-batch
    for c in record["steps"] + [record["after_load"]] + record["resumed_steps"]:
        assert c["max_deviation"] < 5e-7 and c["hook_max_deviation"] < 5e-7, c
        assert c["working_equals_master"] and c["ranks_agree"], c
    assert record["resume_exact"], record["resume_max_diff"]  # resumed = uninterrupted, bit for bit
