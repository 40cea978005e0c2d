"""The first optimizer step has the same size in every precision x ZeRO stage the trainer accepts.

Faults this guards against (DeepSpeed 0.19.8, read in its source):
- fp16 at ZeRO 0: `engine.backward` multiplies the loss by the loss scale only for ZeRO
  optimizers, yet `FP16_UnfusedOptimizer.step` divides the gradients by it. Adam then sees
  gradients 2^16 times too small, comparable to its eps, and the update shrinks. The hook keeps
  the weights on the sphere, so nothing in the logs looks wrong. The trainer refuses it.
- bf16 (and fp16) at ZeRO 0: `FP16_UnfusedOptimizer.__init__` runs one optimizer step on zero
  gradients to create Adam's state, so Adam's step count is 1 ahead and its bias correction
  shrinks the first real update to 0.73x. The trainer drops that state after engine creation.

The worker forces fp16 through DeepSpeed's CPU path (see tests/workers/precision_worker.py).
With Adam the first update is lr * g / (|g| + eps) per element, so mean |dW| / lr is ~1 and
differs between cases only by rounding of tiny gradients: the tolerance is tight.
"""

import json

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.ds_config import check_ds_config

from conftest import REPO, torchrun

LR = 1e-2
CASES = [(stage, precision, False) for stage in (0, 1, 2, 3) for precision in ("fp32", "bf16", "fp16")]
CASES += [(stage, precision, True) for stage in (2, 3) for precision in ("fp32", "bf16", "fp16")]
CASES += [(1, "bf16_fp32_accum", False)]  # bf16 weights, fp32 gradient accumulation: BF16_Optimizer


def case_id(case):
    stage, precision, offload = case
    return f"zero{stage}{'_offload' if offload else ''}_{precision}"


def ds_json(stage, precision, offload):
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": precision.startswith("bf16")},
        "fp16": {"enabled": precision == "fp16"},
        "zero_optimization": {"stage": stage},
    }
    if precision == "bf16_fp32_accum":
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    if offload:
        config["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    return config


def refusal(case):
    """The trainer's startup check on a device that supports fp16 and bf16: None, or its message."""
    try:
        check_ds_config(
            ds_json(*case), world_size=1, tensor_parallel=1, source="ds.json", fp16_supported=True, bf16_supported=True
        )
    except NgptConfigError as err:
        return str(err)
    return None


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("precision") / "results.json"
    cases = ",".join(f"{s}:{p}:{'offload' if o else 'none'}" for s, p, o in CASES)
    torchrun(REPO / "tests/workers/precision_worker.py", out, cases, LR, nproc=1)
    return {(r["stage"], r["precision"], r["offload"]): r for r in json.loads(out.read_text())}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_first_update_equals_fp32_zero0_where_accepted_and_the_rest_are_refused(measured, case):
    reference = measured[(0, "fp32", False)]
    assert reference["optimizer"] == "AdamW"
    assert 0.9 < reference["mean_update_over_lr"] < 1.0  # ~sign(g) per element; tiny gradients move less
    record = measured[case]
    assert not record["skipped"]
    message = refusal(case)
    if message is None:
        assert record["mean_update_over_lr"] == pytest.approx(reference["mean_update_over_lr"], rel=2e-4), record
    else:
        # Refused only where the update really is wrong, and the message says what to use instead.
        assert record["mean_update_over_lr"] < 0.5 * reference["mean_update_over_lr"], record
        assert "fp16.enabled" in message and "ZeRO stage 0" in message and "bf16" in message


def test_fp16_at_zero0_is_refused_at_startup_and_other_stages_are_not():
    message = refusal((0, "fp16", False))
    assert message is not None
    assert message.startswith("DeepSpeed config ds.json")
    assert "set zero_optimization.stage to 1, 2 or 3, or use bf16" in message
    for stage in (1, 2, 3):
        assert refusal((stage, "fp16", False)) is None
    for precision in ("fp32", "bf16"):
        assert refusal((0, precision, False)) is None


def test_the_cases_cover_every_optimizer_wrapper_the_hook_knows(measured):
    assert {r["optimizer"] for r in measured.values()} == {
        "AdamW",
        "FP16_UnfusedOptimizer",
        "DeepSpeedZeroOptimizer",
        "DeepSpeedZeroOptimizer_Stage3",
        "BF16_Optimizer",
    }
