"""The loss of the transformers causal LMs (ngpt_ds.hf.modeling_ngpt), as transformers' own causal LMs compute it
(loss_utils.ForCausalLMLoss): the mean cross-entropy of the targets, or with `num_items_in_batch` their sum divided
by it, through ngpt_ds's own cross-entropy (ngpt_ds.model.loss).

A batch with no target (every label -100: a prompt-only example, a completion cut off by truncation) is what
transformers' loss makes of it: the mean is 0/0, NaN, and the sum 0, and either way every gradient is exactly 0.
ngpt_ds's cross-entropy divides its gradient by the count of targets, so with none every gradient was NaN, and one
such batch made an optimizer step turn every weight NaN (transformers' Trainer steps on it: it only leaves NaN
losses out of the logged average).

This file is also copied into every `--format hf` export (with its ngpt_ds imports made relative).
"""

from __future__ import annotations

from typing import Any

import torch


def causal_lm_loss(model: Any, logits: torch.Tensor, targets: torch.Tensor, num_items: Any) -> torch.Tensor:
    """`logits` [B, T, V] against `targets` [B, T] (-1: no target) with `model.cross_entropy` (ngpt_ds's CausalLM):
    their mean, or with `num_items` (the Trainer's num_items_in_batch, a tensor or an int) their sum / num_items.

    With no target, the mean is NaN and the sum 0 (0/0, NaN, when num_items is 0 too), with every gradient 0, as
    in transformers (F.cross_entropy skips ignored targets in its backward). Tensor operations only: nothing read
    on the host, so torch.compile(fullgraph=True) keeps it in its graph."""
    counted = targets != -1
    count = counted.sum()
    some = count > 0
    # With no target, the first is made a real one (token 0) so that the cross-entropy divides by 1, not 0; its
    # value then goes nowhere (torch.where's backward gives the unselected branch a gradient of exactly 0).
    flat = targets.flatten()
    first = torch.where(some, flat[:1], torch.zeros_like(flat[:1]))
    mean = model.cross_entropy(logits, torch.cat([first, flat[1:]]).view_as(targets))
    if num_items is None:
        return torch.where(some, mean, torch.full_like(mean, float("nan")))
    summed = torch.where(some, mean * count, torch.zeros_like(mean))
    if torch.is_tensor(num_items):
        num_items = num_items.to(summed.device)
    return summed / num_items
