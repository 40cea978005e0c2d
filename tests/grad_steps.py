"""One forward and backward of a model, and the comparison of two of them bit for bit: what the tests of a
rewritten autograd path (tests/test_speed27_*.py, tests/test_speed30_block_update.py,
tests/test_eco30_hf_gradient_checkpointing.py) run with the new and the old form and compare."""

from __future__ import annotations

from collections.abc import Callable

import torch

Step = tuple[torch.Tensor, dict[str, torch.Tensor]]
"""The loss (detached) and every parameter's gradient by name."""


def loss_and_grads(
    model: torch.nn.Module, loss_of: Callable[[], torch.Tensor], autocast: torch.dtype | None = None
) -> Step:
    """Clears `model`'s gradients, runs `loss_of()` (under CPU autocast to `autocast` when given) and its backward;
    returns the loss and a copy of each gradient, so that the next step's do not overwrite them."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        loss = loss_of()
    loss.backward()
    return loss.detach().clone(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same_step(new: Step, old: Step) -> None:
    """The two steps' losses and every gradient are equal bit for bit; a differing gradient is named."""
    (loss_new, grads_new), (loss_old, grads_old) = new, old
    assert torch.equal(loss_new, loss_old), (loss_new, loss_old)
    assert grads_new.keys() == grads_old.keys()
    for name in grads_new:
        assert torch.equal(grads_new[name], grads_old[name]), name
