"""Fault: `model.gradient_checkpointing_enable()` on a loaded ngpt_ds model (and so transformers' Trainer with
`gradient_checkpointing=True`) raised "NGPTForCausalLM does not support activation checkpointing", though the wrapped
model checkpoints its blocks itself (ngpt_ds.model.lm checkpoint_every). Now it sets that: the same loss and gradients,
bit for bit, with every block recomputed, also with transformers' default use_cache=True in a training forward."""

import pytest
import torch
from grad_steps import assert_same_step, loss_and_grads

import ngpt_ds.model.lm as lm


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_gradient_checkpointing_enable_same_loss_and_grads(hf_saved, arch, monkeypatch):
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401  (registers the Auto classes)

    model = AutoModelForCausalLM.from_pretrained(str(hf_saved[arch]))
    model.train()
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    recomputed = []

    def counted(*args, **kwargs):
        recomputed.append(1)
        return torch.utils.checkpoint.checkpoint(*args, **kwargs)

    monkeypatch.setattr(lm, "checkpoint", counted)

    def step():
        return loss_and_grads(model, lambda: model(ids, labels=ids).loss)

    plain = step()
    plain_loss = plain[0]
    assert recomputed == []
    assert model.supports_gradient_checkpointing
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    checkpointed = step()
    assert len(recomputed) == 2  # both blocks
    assert_same_step(checkpointed, plain)

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=2)
    recomputed.clear()
    assert torch.equal(step()[0], plain_loss)
    assert len(recomputed) == 1  # block 0 of 2

    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    recomputed.clear()
    assert torch.equal(step()[0], plain_loss)
    assert recomputed == []
