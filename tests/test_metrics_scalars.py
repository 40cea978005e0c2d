"""The training scalars of metrics.jsonl against plain torch on the same batches and weights: a real 2-rank
gloo run (GPT with a warmup, ZeRO 0 fp32, micro-batch 2 x accumulation 2) whose ranks record, at each step,
the batches their loader gave, the weights the step started from and the LR in the optimizer's
param_groups (a recorder around Trainer.train_step, written to the test's folder)."""

import json
import math
import sys

import pytest
import torch

from ngpt_ds.model.config import ModelConfig
from ngpt_ds.model.factory import build_model

from conftest import run, tiny_ngpt, tiny_train, torchrun, train_flags, write_ds_config, write_yaml

RECORDER = """
import sys
import torch
import torch.distributed as dist
from ngpt_ds.train import loop

records, step_of_trainer, fit_of_trainer = [], loop.Trainer.train_step, loop.Trainer.fit


def train_step(self):
    lr = [group["lr"] for group in self.engine.optimizer.param_groups]
    weights = {k: v.detach().float().clone() for k, v in self.model.state_dict().items()}
    batches, next_batch = [], self.loader.next_batch

    def recorded():
        batch = next_batch()
        batches.append([t.clone() for t in batch])
        return batch

    self.loader.next_batch = recorded
    try:
        return step_of_trainer(self)
    finally:
        del self.loader.next_batch
        records.append({"lr": lr, "weights": weights, "batches": batches})


def fit(self):
    summary = fit_of_trainer(self)
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, [r["batches"] for r in records])
    if dist.get_rank() == 0:
        for i, record in enumerate(records):
            record["batches"] = [rank[i] for rank in every]
        torch.save({"records": records, "model": self.run.model.to_dict()}, sys.argv[1])
    return summary


loop.Trainer.train_step, loop.Trainer.fit = train_step, fit
from ngpt_ds.cli.train import main

sys.exit(main(sys.argv[2:]))
"""

STEPS, WARMUP, LR = 5, 2, 1e-2


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, tiny_dataset):
    tmp = tmp_path_factory.mktemp("metrics_scalars")
    recorder = tmp / "recorder.py"
    recorder.write_text(RECORDER)
    model = {**tiny_ngpt(), "arch": "gpt"}
    config = write_yaml(tmp / "gpt.yaml", model, tiny_train(STEPS, lr=LR, warmup_steps=WARMUP, min_lr=0.0))
    ds = write_ds_config(tmp / "z0.json", stage=0, bf16=False, micro=2, accum=2)
    out = tmp / "run"
    args = train_flags(config, ds, tiny_dataset, out)
    torchrun(recorder, tmp / "record.pt", *args, nproc=2, timeout=300)
    record = torch.load(tmp / "record.pt", weights_only=False)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return record, {m["step"]: m for m in metrics if "train/loss" in m}


def plain_torch(record: dict, step: dict) -> tuple[float, float]:
    """(mean loss over every rank's micro-batches, the global gradient norm before clipping) of one step."""
    model = build_model(ModelConfig.from_dict(record["model"])).float()
    model.load_state_dict(step["weights"])
    losses = []
    for rank in step["batches"]:
        for inputs, targets in rank:
            _, loss = model(inputs, targets)
            (loss / 4).backward()  # 2 ranks x 2 micro-batches, each weighing the same
            losses.append(loss.item())
    norm = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in model.parameters() if p.grad is not None))
    return sum(losses) / len(losses), norm.item()


def test_train_loss_is_the_mean_over_micro_batches_and_ranks(recorded):
    record, logged = recorded
    assert sorted(logged) == list(range(1, STEPS + 1))
    for number, step in enumerate(record["records"], start=1):
        assert [len(rank) for rank in step["batches"]] == [2, 2]
        loss, _ = plain_torch(record, step)
        assert logged[number]["train/loss"] == pytest.approx(loss, rel=1e-5)


def test_logged_lr_is_the_lr_the_step_applied(recorded):
    """Fault: train/lr was read after the step, when DeepSpeed had stepped the schedule on: each step logged
    the next step's LR. Step 1 of a 2-step warmup trained at LR 0 and logged 0.005; the cosine's last step
    logged min_lr while training above it."""
    record, logged = recorded
    # The schedule by hand: linear warmup from 0 over WARMUP steps, then cosine to 0 at STEPS.
    by_hand = [LR * k / WARMUP for k in range(WARMUP)]
    by_hand += [LR * 0.5 * (1 + math.cos(math.pi * (k - WARMUP) / (STEPS - WARMUP))) for k in range(WARMUP, STEPS)]
    applied = [step["lr"][0] for step in record["records"]]
    assert applied == pytest.approx(by_hand, abs=1e-12)
    assert [logged[k]["train/lr"] for k in range(1, STEPS + 1)] == pytest.approx(applied, abs=1e-12)


def test_grad_norm_is_logged_at_zero_stage_0_fp32_before_clipping(recorded):
    """Fault: DeepSpeed's ZeRO 0 fp32 engine clips with a norm it then discards (get_global_grad_norm() is
    None), and metrics.jsonl and TensorBoard had no train/grad_norm at all for such runs. Now the norm of the
    gradients averaged over ranks and micro-batches, before clipping to 1.0 (this run's norms are above it)."""
    record, logged = recorded
    norms = []
    for number, step in enumerate(record["records"], start=1):
        _, norm = plain_torch(record, step)
        norms.append(norm)
        assert "train/grad_norm" in logged[number], f"step {number} logged no train/grad_norm"
        assert logged[number]["train/grad_norm"] == pytest.approx(norm, rel=1e-5)
    assert max(norms) > 1.0  # at least one step was clipped: the logged norm is the one before


COUNTER = """
import json
import sys
from ngpt_ds.train import loop

computed, norm_of = [], loop.grad_norm_deepspeed_leaves_out


def counted(engine, model):
    computed.append(int(engine.global_steps) + 1)  # the step this norm belongs to
    with open(sys.argv[1], "w") as f:
        json.dump(computed, f)
    return norm_of(engine, model)


loop.grad_norm_deepspeed_leaves_out = counted
from ngpt_ds.cli.train import main

sys.exit(main(sys.argv[2:]))
"""


def test_the_zero_stage_0_fp32_grad_norm_is_computed_only_for_logged_steps(tmp_path, tiny_dataset):
    """Fault (performance): the grad norm DeepSpeed's ZeRO 0 fp32 engine leaves out was computed at every step,
    a pass over every gradient (a square and a sum per parameter, plus a tensor-parallel all-reduce), though
    only the steps of train.log_interval show it: 6 computations for a 6-step run logged at steps 3 and 6.
    Now only for a logged step; its record still holds the norm."""
    counter = tmp_path / "counter.py"
    counter.write_text(COUNTER)
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(6, log_interval=3))
    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=2, accum=1)
    out = tmp_path / "run"
    args = train_flags(config, ds, tiny_dataset, out)
    run([sys.executable, counter, tmp_path / "computed.json", *args])
    assert json.loads((tmp_path / "computed.json").read_text()) == [3, 6]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    norms = {r["step"]: r.get("train/grad_norm") for r in records if "train/loss" in r}
    assert sorted(norms) == [3, 6] and all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in norms.values())
