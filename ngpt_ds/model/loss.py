"""The training loss: mean token cross-entropy, computed in fp32 (or wider) with a hand-written backward,
a block of rows at a time.

F.cross_entropy over a bf16 model's logits makes a full fp32 copy of the [tokens, vocabulary]
tensor, keeps its log-softmax for the backward and then costs four more passes over it there
(zero-filled gradient, scatter, log-softmax backward, cast back to bf16); at the default preset's
4k vocabulary the loss was about a tenth of a CPU training step (docs/benchmarks.md, "Where the time
goes"). This computes the same function over blocks of rows, each small enough to stay in cache:
the forward keeps only the target log-probabilities, the backward recomputes each block's softmax
and writes the closed-form gradient softmax(z) - onehot(target), scaled by 1/(number of counted
targets), straight into the gradient. No fp32 copy of the whole logits is ever made or kept: at a
32k vocabulary and 2048 tokens that is 250 MiB less held between forward and backward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

#: Elements of one fp32 block on a CPU (4 MiB): measured fastest there among 2^18, 2^20 and 2^22, at
#: 4k and 32k vocabularies (docs/benchmarks.md, "MFU").
BLOCK_ELEMENTS = 1 << 20
#: On an accelerator (256 MiB): each block costs a few kernel launches, and a block of 2^20 elements
#: is a few microseconds of memory traffic on a GPU, less than its launches; at 2^26 a 32k vocabulary
#: and 16k tokens per micro-batch is 8 blocks instead of 512, while the 2 GiB fp32 copy of the whole
#: logits is still never made. Not measured on a GPU (none was available).
ACCELERATOR_BLOCK_ELEMENTS = 1 << 26


def _row_blocks(rows: int, vocabulary: int, device_type: str = "cpu") -> list[slice]:
    elements = BLOCK_ELEMENTS if device_type == "cpu" else ACCELERATOR_BLOCK_ELEMENTS
    step = max(1, elements // max(1, vocabulary))
    return [slice(start, min(rows, start + step)) for start in range(0, rows, step)]


class _CrossEntropy(torch.autograd.Function):
    """loss = mean over targets != -1 of -log_softmax(z)[target]; dz = (softmax(z) - onehot) * g / n."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        accumulate = torch.promote_types(logits.dtype, torch.float32)
        counted = targets != -1
        index = targets.clamp_min(0).unsqueeze(1)
        n = counted.sum()
        blocks = _row_blocks(logits.shape[0], logits.shape[1], logits.device.type)
        target_log_probs = torch.empty(logits.shape[0], dtype=accumulate, device=logits.device)
        # One block buffer, reused: the cast and the log-softmax both run in place on it.
        buffer = torch.empty(blocks[0].stop if blocks else 0, logits.shape[1], dtype=accumulate, device=logits.device)
        for rows in blocks:
            block = buffer[: rows.stop - rows.start]
            block.copy_(logits[rows])
            torch.log_softmax(block, dim=-1, out=block)
            target_log_probs[rows] = block.gather(1, index[rows]).squeeze(1)
        loss = -target_log_probs.masked_fill_(~counted, 0).sum() / n
        ctx.save_for_backward(logits, index, counted, n)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, index, counted, n = ctx.saved_tensors
        accumulate = torch.promote_types(logits.dtype, torch.float32)
        row_scale = (counted.to(accumulate) * (grad / n)).unsqueeze(1)  # ignored rows get 0
        blocks = _row_blocks(logits.shape[0], logits.shape[1], logits.device.type)
        dz = torch.empty_like(logits)
        height = blocks[0].stop if blocks else 0
        buffer = torch.empty(height, logits.shape[1], dtype=accumulate, device=logits.device)
        minus_one = torch.full((height, 1), -1.0, dtype=accumulate, device=logits.device)
        for rows in blocks:
            block = buffer[: rows.stop - rows.start]
            block.copy_(logits[rows])
            torch.softmax(block, dim=-1, out=block)
            block.scatter_add_(1, index[rows], minus_one[: rows.stop - rows.start])
            if dz.dtype == accumulate:
                torch.mul(block, row_scale[rows], out=dz[rows])
            else:
                dz[rows].copy_(block.mul_(row_scale[rows]))
        return dz, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [N, V] (any float dtype; computed in fp32 or wider) against
    targets [N], ignoring targets of -1: the value of F.cross_entropy(logits.float(), targets,
    ignore_index=-1), NaN when every target is ignored, as there.

    Under torch.compile it is F.cross_entropy itself: Inductor fuses that one's passes, and
    measured faster there than with this backward (docs/benchmarks.md, "MFU")."""
    if torch.compiler.is_compiling():
        return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets, ignore_index=-1)
    return _CrossEntropy.apply(logits, targets)
