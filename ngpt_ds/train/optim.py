"""Optimizer parameter groups and the learning-rate schedule (paper §3 and appendix A.5; the
official code's choices where the paper is silent; docs/ngpt_notes.md, "optimizer")."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ngpt_ds.model.layers import DeclaredMatrix

if TYPE_CHECKING:
    from ngpt_ds.train.config import TrainConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight matrices (decayed by `weight_decay`) and everything else
    (nGPT's scaling vectors, GPT's norm weights), never decayed, as in the official code: the
    scaling vectors are neither renormalized nor decayed (docs/ngpt_notes.md)."""
    matrix_ids = {id(m.weight) for m in model.modules() if isinstance(m, DeclaredMatrix)}
    matrices = [p for p in model.parameters() if id(p) in matrix_ids]
    vectors = [p for p in model.parameters() if id(p) not in matrix_ids]
    groups = [{"params": matrices, "weight_decay": weight_decay, "name": "matrices"}]
    if vectors:
        groups.append({"params": vectors, "weight_decay": 0.0, "name": "vectors"})
    return groups


def build_optimizer(
    model: nn.Module, *, lr: float, betas: tuple[float, float], eps: float, weight_decay: float
) -> torch.optim.AdamW:
    """AdamW as the official code (betas (0.9, 0.95), eps 1e-8); nGPT sets weight_decay 0 (= Adam).

    The fused kernel is used where torch has one for the device (CPU and CUDA)."""
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=True)


def lr_factor(step: int, *, max_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak LR at optimizer step `step` (0-based): the official code's get_lr.

    Linear warmup lr * step / warmup_steps, then cosine from 1 to min_lr_ratio over the
    remaining steps, reaching it at step = max_steps. nGPT uses no warmup (PAPER Table 3)."""
    if step < warmup_steps:
        return step / warmup_steps
    if step >= max_steps:
        return min_lr_ratio
    decay_ratio = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr_ratio + coeff * (1.0 - min_lr_ratio)


def build_schedule(
    optimizer: torch.optim.Optimizer, *, max_steps: int, warmup_steps: int, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR that DeepSpeed steps once per optimizer step (and saves in checkpoints)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, max_steps=max_steps, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio),
    )


def apply_on_resume(
    scheduler: torch.optim.lr_scheduler.LambdaLR, train: TrainConfig, saved_train: dict[str, Any], next_step: int
) -> list[str]:
    """After a checkpoint is loaded: this run's optimizer settings and LR schedule, not the checkpoint's.

    torch's Optimizer.load_state_dict takes lr, betas, eps and weight_decay from the checkpoint, and
    LambdaLR.load_state_dict its base LRs: a resume with another train.lr, betas, eps or weight_decay
    trained on with the old values while config.yaml recorded the new ones, and the first step after
    the resume used the LR the checkpoint's schedule had set (0 after extending a finished cosine). The
    schedule is recomputed over this run's settings at the same step (not restarted), so a changed
    max_steps, warmup_steps, lr or min_lr moves the LR at once. `saved_train`: the `train:` section of
    the checkpoint's config.yaml. Returns the lines to print, one per kind of change (none: nothing is
    touched, so an unchanged resume stays bit for bit)."""
    assert train.weight_decay is not None and train.warmup_steps is not None  # TrainConfig.resolve
    groups = scheduler.optimizer.param_groups
    _restore_vectors_group(groups)
    matrices = groups[0]  # parameter_groups: the matrices first, then the vectors (when any)
    optimizer_changes = [
        (name, before, after)
        for name, before, after in (
            ("betas", list(matrices["betas"]), list(train.betas)),
            ("eps", matrices["eps"], train.eps),
            ("weight_decay", matrices["weight_decay"], train.weight_decay),
        )
        if before != after
    ]
    # The vectors' own values, named only where they differ from the matrices' (a checkpoint of this trainer holds
    # the same betas, eps and base LR in both): a vectors group altered alone had trained on with its values.
    for name, before, after in (
        ("betas", [list(g["betas"]) for g in groups], list(train.betas)),
        ("eps", [g["eps"] for g in groups], train.eps),
        ("lr", list(scheduler.base_lrs), train.lr),
    ):
        optimizer_changes += [
            (f"{name} (vectors' group)", b, after) for b in before[1:] if b != before[0] and b != after
        ]
    old_lr = scheduler.base_lrs[0]
    schedule = {
        "lr": train.lr,
        "min_lr": train.min_lr,
        "max_steps": train.max_steps,
        "warmup_steps": train.warmup_steps,
    }
    old = {"lr": old_lr, **{k: saved_train.get(k, v) for k, v in schedule.items() if k != "lr"}}
    schedule_changes = [(k, old[k], schedule[k]) for k in schedule if old[k] != schedule[k]]
    if not optimizer_changes and not schedule_changes:
        return []
    factor = lr_factor(
        scheduler.last_epoch,
        max_steps=train.max_steps,
        warmup_steps=train.warmup_steps,
        min_lr_ratio=train.min_lr / train.lr,
    )
    lr_before = groups[0]["lr"]
    for group in groups:
        group["betas"], group["eps"] = tuple(train.betas), train.eps
        if group is matrices:  # the vectors are never decayed (parameter_groups)
            group["weight_decay"] = train.weight_decay
        group["initial_lr"] = train.lr
        group["lr"] = train.lr * factor
    scheduler.base_lrs = [train.lr] * len(groups)
    scheduler._last_lr = [group["lr"] for group in groups]  # what get_last_lr (the logged LR) reports
    lines = []
    if optimizer_changes:
        lines.append(
            f"changed since the checkpoint: {_changes(optimizer_changes)}; the optimizer uses this run's values from "
            f"step {next_step} on (Adam's moments are kept)"
        )
    if schedule_changes:
        warmup = f"linear warmup over {train.warmup_steps} steps, then " if train.warmup_steps else ""
        hint = ""
        followed = all(old[k] != schedule[k] for k in ("max_steps", "warmup_steps")) and all(
            warmup == min(2000, steps // 10)
            for steps, warmup in ((old["max_steps"], old["warmup_steps"]), (train.max_steps, train.warmup_steps))
        )
        if followed:  # TrainConfig.resolve: the GPT default; an nGPT default of 0 never moves
            hint = (
                f". The warmup moved with max_steps (GPT's default warmup_steps is min(2000, max_steps // 10)): "
                f"set train.warmup_steps: {old['warmup_steps']} to keep the old one"
            )
        lines.append(
            f"changed since the checkpoint: {_changes(schedule_changes)}; the LR schedule ({warmup}cosine from "
            f"lr {train.lr:g} to min_lr {train.min_lr:g} at step {train.max_steps}) is recomputed at the same step, "
            f"not restarted: step {next_step} trains at LR {train.lr * factor:.4g}, where the checkpoint's schedule "
            f"had {lr_before:.4g}{hint}"
        )
    return lines


def _restore_vectors_group(groups: list[dict[str, Any]]) -> None:
    """The second group's own name and weight_decay 0 (parameter_groups). DeepSpeed's ZeRO-3 universal load
    (a resume at another data-parallel size) copies the first group's settings into every group, name and
    weight_decay included, so GPT's norm weights (nGPT's scaling vectors, when train.weight_decay > 0)
    were decayed from then on. A no-op after any other load: the checkpoint holds these values already."""
    if len(groups) == 2:
        groups[0]["name"], groups[1]["name"] = "matrices", "vectors"
        groups[1]["weight_decay"] = 0.0


def _changes(changes: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"train.{name} {before} -> {after}" for name, before, after in changes)
