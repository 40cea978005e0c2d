"""train/grad_norm and gradient clipping of a pipeline-parallel run at ZeRO 0 in fp32, against plain torch on
the same weights and batches: one gloo job of GPT (its norms are above the clip of 1.0) on 4 ranks, 2 stages x
2 data-parallel replicas that read different batches, steps 1-3 with gradient_clipping 1.0 and steps 4-6
without (tests/workers/pp_grad_norm_worker.py records each step on every rank)."""

import pytest
import torch

from ngpt_ds.model.config import ModelConfig
from ngpt_ds.model.factory import build_model

from conftest import REPO, read_metrics, tiny_ngpt, tiny_train, torchrun, train_flags, write_ds_config, write_yaml

STEPS, LOG_INTERVAL, CLIP_OFF_FROM, MICRO_BATCHES = 6, 3, 4, 2
STAGES, REPLICAS = 2, 2


@pytest.fixture(scope="module")
def piped(tmp_path_factory, tiny_dataset):
    tmp = tmp_path_factory.mktemp("pipeline_grad_norm")
    model = {**tiny_ngpt(), "arch": "gpt"}
    train = tiny_train(STEPS, log_interval=LOG_INTERVAL, pipeline_parallel_size=STAGES)
    config = write_yaml(tmp / "gpt.yaml", model, train)
    ds = write_ds_config(tmp / "z0.json", stage=0, bf16=False, micro=2, accum=MICRO_BATCHES)
    out = tmp / "run"
    args = train_flags(config, ds, tiny_dataset, out)
    script = REPO / "tests/workers/pp_grad_norm_worker.py"
    torchrun(script, tmp / "record.pt", CLIP_OFF_FROM, *args, nproc=STAGES * REPLICAS, timeout=300)
    record = torch.load(tmp / "record.pt", weights_only=False)
    return record, {m["step"]: m for m in read_metrics(out)}


def rank_of(record: dict, stage: int, replica: int) -> dict:
    (found,) = [r for r in record["ranks"] if (r["stage"], r["replica"]) == (stage, replica)]
    return found


def plain_torch_grads(record: dict, number: int) -> dict[str, torch.Tensor]:
    """The gradients of step `number` (1-based) before clipping, by plain torch from the stages' weights and
    the micro-batches every replica read: each micro-batch's loss divided by the micro-batches of the whole
    step (every replica's), i.e. the mean of the replicas' gradients, as the data-parallel all-reduce makes it."""
    weights = {}
    for stage in range(STAGES):
        weights |= rank_of(record, stage, 0)["records"][number - 1]["weights"]
    model = build_model(ModelConfig.from_dict(record["model"])).float()
    model.load_state_dict(weights, strict=True)
    for replica in range(REPLICAS):
        for inputs, targets in rank_of(record, 0, replica)["records"][number - 1]["batches"]:
            _, loss = model(inputs, targets)
            (loss / (MICRO_BATCHES * REPLICAS)).backward()
    return {name: p.grad.double() for name, p in model.named_parameters() if p.grad is not None}


def norm_of(grads: dict[str, torch.Tensor]) -> float:
    return torch.sqrt(sum(g.pow(2).sum() for g in grads.values())).item()


def same_tensors(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    """Whether two ranks hold the same names with bit-identical tensors."""
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def test_pipeline_zero_stage_0_fp32_logs_the_global_grad_norm_and_clips_by_it(piped):
    """Fault: DeepSpeed's pipeline engine at ZeRO 0 in fp32 clips in `clip_fp32_gradients`
    (runtime.utils.clip_grad_norm_), which discards its norm, so such runs logged no train/grad_norm; and that
    norm counts only the gradients of pipeline stage 0 (it counts a parameter on the ranks of model-parallel
    rank 0 only, and the pipeline grid gives every stage its own model-parallel rank), so every stage was
    clipped by stage 0's norm. Now the norm over every stage of the replicas' averaged gradients, logged and
    clipped by, at every log step, the same on both replicas; with gradient_clipping 0 it is computed only for
    the logged steps."""
    record, logged = piped
    ranks = record["ranks"]
    assert sorted((rank["stage"], rank["replica"]) for rank in ranks) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert sorted(logged) == [3, 6]
    grads = [plain_torch_grads(record, number) for number in range(1, STEPS + 1)]
    norms = [norm_of(g) for g in grads]
    for number, (norm, reference) in enumerate(zip(norms, grads, strict=True), start=1):
        steps = {(rank["stage"], rank["replica"]): rank["records"][number - 1] for rank in ranks}
        # Both stages of a replica read the same micro-batches (DeepSpeed feeds the first stage the inputs and
        # the last the targets), the two replicas different ones; the replicas start from the same weights.
        assert len(steps[0, 0]["batches"]) == MICRO_BATCHES
        for replica in range(REPLICAS):
            for a, b in zip(steps[0, replica]["batches"], steps[1, replica]["batches"], strict=True):
                assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), f"step {number}"
        inputs = [[batch[0] for batch in steps[0, replica]["batches"]] for replica in range(REPLICAS)]
        assert not any(torch.equal(x, y) for x in inputs[0] for y in inputs[1]), f"step {number}"
        for stage in range(STAGES):
            assert same_tensors(steps[stage, 0]["weights"], steps[stage, 1]["weights"]), f"step {number}"
        clipping = steps[0, 0]["clipping"]
        assert clipping == (1.0 if number < CLIP_OFF_FROM else 0.0)
        measured = [steps[stage, replica]["norm"] for stage in range(STAGES) for replica in range(REPLICAS)]
        if clipping > 0 or number in logged:
            # Every rank of both replicas measured the same norm, the one logged and clipped by.
            assert measured == [measured[0]] * len(measured), f"step {number}: {measured}"
            assert measured[0] == pytest.approx(norm, rel=1e-5), f"step {number}"
        else:
            assert measured == [None] * len(measured), f"step {number}"
        if number in logged:
            assert "train/grad_norm" in logged[number], f"step {number} logged no train/grad_norm"
            assert logged[number]["train/grad_norm"] == pytest.approx(norm, rel=1e-5), f"step {number}"
        # The gradients the optimizer stepped with: the same on both replicas, and plain torch's scaled by
        # clip / (norm + 1e-6) where the norm is above the clip (DeepSpeed's formula), as they were otherwise.
        for stage in range(STAGES):
            assert same_tensors(steps[stage, 0]["grads"], steps[stage, 1]["grads"]), f"step {number}"
        scale = min(1.0, clipping / (norm + 1e-6)) if clipping > 0 else 1.0
        stepped = {name: g for stage in range(STAGES) for name, g in steps[stage, 0]["grads"].items()}
        assert stepped.keys() == reference.keys()
        assert norm_of(stepped) == pytest.approx(norm * scale, rel=1e-5), f"step {number}"
        difference = norm_of({name: stepped[name] - scale * reference[name] for name in stepped})
        assert difference <= 1e-5 * norm * scale, f"step {number}"
    assert max(norms[: CLIP_OFF_FROM - 1]) > 1.0  # at least one step was clipped
    # Every step with clipping needs the norm; without, only the logged ones (the same on every rank).
    assert [rank["computed"] for rank in ranks] == [[1, 2, 3, 6]] * len(ranks)
