"""The optimizer the train section configures: the LR schedule against the official get_lr, and weight decay
on matrices only (ngpt_ds.train.optim)."""

import math

import pytest

from ngpt_ds.model import ModelConfig, build_model
from ngpt_ds.train.optim import lr_factor, parameter_groups


def official_get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    """The official code's get_lr (nanoGPT's), restated for the comparison."""
    if it < warmup_iters:
        return learning_rate * it / warmup_iters
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


@pytest.mark.parametrize("warmup, min_lr", [(0, 0.0), (100, 0.0), (100, 3e-4)])
def test_lr_schedule_equals_the_official_get_lr(warmup, min_lr):
    lr, max_steps = 3e-3, 1000
    for step in range(0, max_steps + 1, 7):
        ours = lr * lr_factor(step, max_steps=max_steps, warmup_steps=warmup, min_lr_ratio=min_lr / lr)
        assert ours == pytest.approx(official_get_lr(step, lr, warmup, max_steps, min_lr), rel=1e-12, abs=1e-15)


def test_weight_decay_only_on_matrices_and_never_for_ngpt_scalars():
    for arch in ("ngpt", "gpt"):
        model = build_model(ModelConfig(arch=arch, vocab_size=50, n_layer=2, n_embd=32, n_head=2, seq_len=8))
        groups = parameter_groups(model, weight_decay=0.1)
        decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
        for name, param in model.named_parameters():
            assert (id(param) in decayed) == (param.dim() == 2), name
        assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
