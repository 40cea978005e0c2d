"""A resume applies this run's optimizer settings to every parameter group, not only the matrices' one.

The fault (found by shard36): `optim.apply_on_resume` compared only the first group (the matrices) with train.betas,
train.eps and train.lr; a checkpoint whose vectors group alone held other betas, eps or base LR (altered in every
rank's shard, so the shards agree and each value is legal) resumed with no line and trained the scaling vectors with
those values, while config.yaml recorded the run's own. A real torch AdamW and LambdaLR in the trainer's two groups."""

from __future__ import annotations

import torch

from ngpt_ds.train.config import TrainConfig
from ngpt_ds.train.optim import apply_on_resume, build_schedule


def resumed(vectors: dict[str, object], base_lr: float | None = None):
    train = TrainConfig(max_steps=10, lr=1e-2).resolve("ngpt")
    matrix, vector = torch.nn.Parameter(torch.zeros(4, 4)), torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.AdamW(
        [
            {"params": [matrix], "name": "matrices", "weight_decay": train.weight_decay},
            {"params": [vector], "name": "vectors", "weight_decay": 0.0},
        ],
        lr=train.lr,
        betas=train.betas,
        eps=train.eps,
    )
    scheduler = build_schedule(optimizer, max_steps=train.max_steps, warmup_steps=train.warmup_steps, min_lr_ratio=0.0)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    state = optimizer.state_dict()  # what a checkpoint holds, then altered in the vectors group only
    state["param_groups"][1].update(vectors)
    optimizer.load_state_dict(state)
    if base_lr is not None:
        scheduler.base_lrs[1] = base_lr
    saved = {"lr": train.lr, "min_lr": 0.0, "max_steps": train.max_steps, "warmup_steps": train.warmup_steps}
    lines = apply_on_resume(scheduler, train, saved, next_step=4)
    return train, optimizer.param_groups, scheduler, lines


def test_vectors_betas_and_eps_altered_alone_are_replaced_by_the_runs_and_named():
    train, groups, _, lines = resumed({"betas": (0.5, 0.6), "eps": 1e-3})
    # old code: lines == [] and the vectors group kept betas (0.5, 0.6), eps 0.001
    assert groups[1]["betas"] == tuple(train.betas) and groups[1]["eps"] == train.eps
    assert groups[0]["betas"] == tuple(train.betas) and groups[0]["eps"] == train.eps
    assert groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == train.weight_decay
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "changed since the checkpoint: train.betas (vectors' group) [0.5, 0.6] -> [0.9, 0.95], "
        "train.eps (vectors' group) 0.001 -> 1e-08; the optimizer uses this run's values from step 4 on"
    ), lines


def test_a_vectors_base_lr_altered_alone_is_replaced_by_the_runs():
    train, groups, scheduler, lines = resumed({}, base_lr=0.5)
    assert scheduler.base_lrs == [train.lr, train.lr]  # old code: [0.01, 0.5]
    assert groups[1]["lr"] == groups[0]["lr"] == scheduler.get_last_lr()[0]
    assert "train.lr (vectors' group) 0.5 -> 0.01" in lines[0], lines


def test_an_unaltered_checkpoint_is_not_touched():
    _, groups, scheduler, lines = resumed({})
    assert lines == []
    assert [g["lr"] for g in groups] == scheduler.get_last_lr()
