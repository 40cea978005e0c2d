"""Megatron-style tensor-parallel layers for the model's declared matrices.

Each keeps its parent's `layout` (norm_dim, split_dim), so the hypersphere constraint of
a shard is local: column-parallel weights hold whole rows (unit along d_model), row-
parallel weights hold whole columns, vocab-parallel tables hold whole token vectors.
Communication is only in the forward/backward of activations: one all-reduce after each
row-parallel projection (and the vocab-parallel lookup), its mirror in the backward of
each column-parallel input, and three small ones in the vocab-parallel cross-entropy.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ngpt_ds.model.layers import Projection, TokenEmbedding, scaled_linear


class _CopyToTensorParallel(torch.autograd.Function):
    """Identity forward; all-reduce of the gradient backward (the input feeds every shard)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTensorParallel(torch.autograd.Function):
    """All-reduce forward (sum of the shards' partial outputs); identity backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def copy_to_tensor_parallel(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    return _CopyToTensorParallel.apply(x, group)


def reduce_from_tensor_parallel(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    return _ReduceFromTensorParallel.apply(x, group)


def mark_sharded(param: nn.Parameter, dim: int) -> None:
    """DeepSpeed counts gradient norms of sharded params on every tensor-parallel rank
    (replicated ones on tensor rank 0 only)."""
    param.tensor_model_parallel = True  # type: ignore[attr-defined]  # DeepSpeed's attributes, unknown to torch's stubs
    param.partition_dim = dim  # type: ignore[attr-defined]


class ColumnParallelProjection(Projection):
    """y_shard = x W_shard^T with W_shard = this rank's rows [out/tp, in]; y stays sharded."""

    def __init__(self, full: Projection, shard: torch.Tensor, group: dist.ProcessGroup | None) -> None:
        super().__init__(full.in_features, shard.shape[0], style="column", on_sphere=full.on_sphere, init_std=0.0)
        self.weight.data.copy_(shard)
        self.group = group
        mark_sharded(self.weight, self.layout.split_dim)

    def forward(self, x: torch.Tensor, row_scale: torch.Tensor | None = None) -> torch.Tensor:
        return scaled_linear(copy_to_tensor_parallel(x, self.group), self.weight, row_scale)


class RowParallelProjection(Projection):
    """y = sum over ranks of x_shard W_shard^T with W_shard = this rank's columns [out, in/tp]."""

    def __init__(self, full: Projection, shard: torch.Tensor, group: dist.ProcessGroup | None) -> None:
        super().__init__(shard.shape[1], full.out_features, style="row", on_sphere=full.on_sphere, init_std=0.0)
        self.weight.data.copy_(shard)
        self.group = group
        mark_sharded(self.weight, self.layout.split_dim)

    def forward(self, x: torch.Tensor, row_scale: torch.Tensor | None = None) -> torch.Tensor:
        # row_scale scales whole output rows, so it applies to each rank's partial sum alike.
        return reduce_from_tensor_parallel(scaled_linear(x, self.weight, row_scale), self.group)


class VocabParallelEmbedding(TokenEmbedding):
    """Rows [vocab_start, vocab_start + V/tp) of the table; other ranks' tokens look up zeros."""

    def __init__(
        self, full: TokenEmbedding, shard: torch.Tensor, vocab_start: int, group: dist.ProcessGroup | None
    ) -> None:
        super().__init__(shard.shape[0], shard.shape[1], on_sphere=full.on_sphere, init_std=0.0)
        self.weight.data.copy_(shard)
        self.vocab_start, self.group = vocab_start, group
        mark_sharded(self.weight, self.layout.split_dim)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        local = token_ids - self.vocab_start
        outside = (local < 0) | (local >= self.weight.shape[0])
        h = F.embedding(local.masked_fill(outside, 0), self.weight)
        return reduce_from_tensor_parallel(h.masked_fill(outside.unsqueeze(-1), 0.0), self.group)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-token -log softmax(z)[target] with z split over the vocabulary across ranks."""

    @staticmethod
    def forward(
        ctx: Any,
        logits: torch.Tensor,
        targets: torch.Tensor,
        vocab_start: int,
        group: dist.ProcessGroup | None,
    ) -> torch.Tensor:
        # logits [N, V/tp] fp32, targets [N] global ids
        row_max = logits.max(dim=-1).values
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - row_max.unsqueeze(-1)
        local = targets - vocab_start
        outside = (local < 0) | (local >= logits.shape[-1])
        local = local.masked_fill(outside, 0)
        target_logit = shifted.gather(1, local.unsqueeze(1)).squeeze(1).masked_fill(outside, 0.0)
        exp = shifted.exp()
        sums = torch.stack([exp.sum(dim=-1), target_logit])
        dist.all_reduce(sums, group=group)
        ctx.save_for_backward(exp.div_(sums[0].unsqueeze(-1)), local, outside)
        return sums[0].log() - sums[1]

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        softmax, local, outside = ctx.saved_tensors
        grad = softmax.clone()
        rows = torch.arange(grad.shape[0], device=grad.device)
        grad[rows, local] -= (~outside).to(grad.dtype)
        return grad * grad_loss.unsqueeze(-1), None, None, None


def vocab_parallel_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, *, vocab_start: int, group: dist.ProcessGroup | None
) -> torch.Tensor:
    """Mean cross-entropy over targets != -1; logits [B, T, V/tp] (this rank's vocabulary slice)."""
    flat_targets = targets.flatten()
    valid = flat_targets != -1
    per_token = _VocabParallelCrossEntropy.apply(
        logits.float().flatten(0, 1), flat_targets.clamp(min=0), vocab_start, group
    )
    return (per_token * valid).sum() / valid.sum()
