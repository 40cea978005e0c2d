"""Optimizer parameter groups and the learning-rate schedule (paper §3 and appendix A.5; the
official code's choices where the paper is silent; docs/ngpt_notes.md, "optimizer")."""

from __future__ import annotations

import math

import torch
from torch import nn

from ngpt_ds.model.layers import DeclaredMatrix


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
