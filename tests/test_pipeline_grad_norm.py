"""train/grad_norm and gradient clipping of a pipeline-parallel run at ZeRO 0 in fp32, against plain torch on
the same weights and batches: one 2-stage gloo job of GPT (its norms are above the clip of 1.0), steps 1-3
with gradient_clipping 1.0 and steps 4-6 without (tests/workers/pp_grad_norm_worker.py records each step)."""

import pytest
import torch

from ngpt_ds.model.config import ModelConfig
from ngpt_ds.model.factory import build_model

from conftest import REPO, read_metrics, tiny_ngpt, tiny_train, torchrun, write_ds_config, write_yaml

STEPS, LOG_INTERVAL, CLIP_OFF_FROM, MICRO_BATCHES = 6, 3, 4, 2


@pytest.fixture(scope="module")
def piped(tmp_path_factory, tiny_dataset):
    tmp = tmp_path_factory.mktemp("pipeline_grad_norm")
    model = {**tiny_ngpt(), "arch": "gpt"}
    config = write_yaml(tmp / "gpt.yaml", model, tiny_train(STEPS, log_interval=LOG_INTERVAL, pipeline_parallel_size=2))
    ds = write_ds_config(tmp / "z0.json", stage=0, bf16=False, micro=2, accum=MICRO_BATCHES)
    out = tmp / "run"
    args = ["--config", config, "--deepspeed_config", ds, "--data", tiny_dataset, "--out", out, "--no-progress"]
    torchrun(REPO / "tests/workers/pp_grad_norm_worker.py", tmp / "record.pt", CLIP_OFF_FROM, *args, timeout=300)
    record = torch.load(tmp / "record.pt", weights_only=False)
    return record, {m["step"]: m for m in read_metrics(out)}


def plain_torch_norm(record: dict, number: int) -> float:
    """The global gradient norm before clipping of step `number` (1-based), from the stages' weights and
    the micro-batches the step read (every rank reads the same)."""
    steps = [rank["records"][number - 1] for rank in record["ranks"]]
    weights = {name: value for step in steps for name, value in step["weights"].items()}
    model = build_model(ModelConfig.from_dict(record["model"])).float()
    model.load_state_dict(weights, strict=True)
    for inputs, targets in steps[0]["batches"]:
        _, loss = model(inputs, targets)
        (loss / MICRO_BATCHES).backward()
    return torch.sqrt(sum(p.grad.double().pow(2).sum() for p in model.parameters() if p.grad is not None)).item()


def test_pipeline_zero_stage_0_fp32_logs_the_global_grad_norm_and_clips_by_it(piped):
    """Fault: DeepSpeed's pipeline engine at ZeRO 0 in fp32 clips in `clip_fp32_gradients`
    (runtime.utils.clip_grad_norm_), which discards its norm, so such runs logged no train/grad_norm; and that
    norm counts only the gradients of pipeline stage 0 (it counts a parameter on the ranks of model-parallel
    rank 0 only, and the pipeline grid gives every stage its own model-parallel rank), so every stage was
    clipped by stage 0's norm. Now the norm over every stage, logged and clipped by, at every log step; with
    gradient_clipping 0 it is computed only for the logged steps."""
    record, logged = piped
    assert sorted(rank["stage"] for rank in record["ranks"]) == [0, 1]
    assert sorted(logged) == [3, 6]
    norms = [plain_torch_norm(record, number) for number in range(1, STEPS + 1)]
    for number in sorted(logged):
        assert "train/grad_norm" in logged[number], f"step {number} logged no train/grad_norm"
        assert logged[number]["train/grad_norm"] == pytest.approx(norms[number - 1], rel=1e-5)
    for number, norm in enumerate(norms, start=1):
        steps = [rank["records"][number - 1] for rank in record["ranks"]]
        clipping = steps[0]["clipping"]
        assert clipping == (1.0 if number < CLIP_OFF_FROM else 0.0)
        # The gradients the optimizer stepped with: scaled by clip / (norm + 1e-6) where the norm is above
        # the clip (DeepSpeed's formula), as they were otherwise.
        expected = norm * min(1.0, clipping / (norm + 1e-6)) if clipping > 0 else norm
        clipped = sum(step["clipped_squares"] for step in steps) ** 0.5
        assert clipped == pytest.approx(expected, rel=1e-5), f"step {number}"
    assert max(norms[: CLIP_OFF_FROM - 1]) > 1.0  # at least one step was clipped
    # Every step with clipping needs the norm; without, only the logged ones (the same on every rank).
    assert [rank["computed"] for rank in record["ranks"]] == [[1, 2, 3, 6]] * 2
