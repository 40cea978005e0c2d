"""The training loss: mean token cross-entropy, computed in fp32 (or wider) with a hand-written backward.

F.cross_entropy over a bf16 model's logits costs four passes over the [tokens, vocabulary]
tensor in the backward alone (zero-filled gradient, scatter, log-softmax backward, cast back
to bf16); at the default preset's 4k vocabulary the loss was about a tenth of a CPU training
step (docs/benchmarks.md, "Where the time goes"). This computes the same function, with the
gradient in the closed form softmax(z) - onehot(target), scaled by 1/(number of counted
targets), in place on the saved log-probabilities.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class _CrossEntropy(torch.autograd.Function):
    """loss = mean over targets != -1 of -log_softmax(z)[target]; dz = (softmax(z) - onehot) * g / n."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        accumulate = torch.promote_types(logits.dtype, torch.float32)
        # One fresh fp32 copy, normalized in place: a second [tokens, vocabulary] fp32 buffer cost
        # more than its pass (at 2048 x 4096, 32 MiB, glibc maps each such buffer afresh and it is
        # page-faulted in; docs/benchmarks.md, "MFU"). copy=True keeps the caller's fp32 or fp64
        # logits intact.
        log_probs = logits.to(accumulate, copy=True)
        torch.log_softmax(log_probs, dim=-1, out=log_probs)
        counted = targets != -1
        index = targets.clamp_min(0).unsqueeze(1)
        n = counted.sum()
        loss = -log_probs.gather(1, index).squeeze(1).masked_fill(~counted, 0).sum() / n
        ctx.save_for_backward(log_probs, index, counted, n)
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        log_probs, index, counted, n = ctx.saved_tensors
        dz = log_probs.exp_()  # softmax, in place: the log-probabilities are not needed again
        dz.scatter_add_(1, index, torch.full(index.shape, -1.0, dtype=dz.dtype, device=dz.device))
        dz.mul_((counted.to(dz.dtype) * (grad / n)).unsqueeze(1))  # ignored rows get 0
        return dz.to(ctx.logits_dtype), None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [N, V] (any float dtype; computed in fp32 or wider) against
    targets [N], ignoring targets of -1: the value of F.cross_entropy(logits.float(), targets,
    ignore_index=-1), NaN when every target is ignored, as there.

    Under torch.compile it is F.cross_entropy itself: Inductor fuses that one's passes, and
    measured faster there than with this backward (docs/benchmarks.md, "MFU")."""
    if torch.compiler.is_compiling():
        return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets, ignore_index=-1)
    return _CrossEntropy.apply(logits, targets)
