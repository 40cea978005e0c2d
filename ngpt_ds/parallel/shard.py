"""Which slice of every parameter a tensor-parallel rank holds; shard a model, merge shards back.

One plan serves both directions, so sharding and merging cannot disagree. The split
dims come from the modules' declared layouts (ngpt_ds.model.layers): column-style
matrices split their rows, row-style matrices their columns, embeddings the vocabulary.
Fused matrices keep their block order per rank: qkv rows [q_k; k_k; v_k] for rank k's
heads, up_gate rows [u_k; v_k] for rank k's channels.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.config import ModelConfig
from ngpt_ds.model.lm import CausalLM
from ngpt_ds.parallel.groups import ParallelGroups, check_tensor_parallel
from ngpt_ds.parallel.layers import (
    ColumnParallelProjection,
    RowParallelProjection,
    VocabParallelEmbedding,
    mark_sharded,
    vocab_parallel_cross_entropy,
)

if TYPE_CHECKING:
    from ngpt_ds.model.gpt import PreNormBlock
    from ngpt_ds.model.ngpt import NormalizedBlock


@dataclass(frozen=True)
class ShardRule:
    dim: int
    """The dim that is split."""
    blocks: int
    """Equal blocks along `dim` that are split separately (3 for qkv rows, 2 for up_gate rows)."""

    def indices(self, size: int, tp_size: int, tp_rank: int) -> torch.Tensor:
        """Indices along `dim` that rank tp_rank holds, of a full size `size`."""
        block, part = size // self.blocks, size // self.blocks // tp_size
        return torch.cat(
            [torch.arange(b * block + tp_rank * part, b * block + (tp_rank + 1) * part) for b in range(self.blocks)]
        )


def _blocks(model: CausalLM) -> Iterable[NormalizedBlock | PreNormBlock]:
    """model.blocks, typed as what it holds (an nn.ModuleList yields plain Modules to a type checker)."""
    return cast("Iterable[NormalizedBlock | PreNormBlock]", model.blocks)


def tensor_parallel_plan(model: CausalLM) -> dict[str, ShardRule]:
    """Parameter name -> how it is split. Parameters not listed are replicated on every rank."""
    plan = {"embed.weight": ShardRule(0, 1), "head.weight": ShardRule(0, 1)}
    if hasattr(model, "s_z"):
        plan["s_z.param"] = ShardRule(0, 1)
    for i, block in enumerate(_blocks(model)):
        p = f"blocks.{i}."
        plan[p + "attn.qkv.weight"] = ShardRule(block.attn.qkv.layout.split_dim, 3)
        plan[p + "attn.out.weight"] = ShardRule(block.attn.out.layout.split_dim, 1)
        plan[p + "mlp.up_gate.weight"] = ShardRule(block.mlp.up_gate.layout.split_dim, 2)
        plan[p + "mlp.down.weight"] = ShardRule(block.mlp.down.layout.split_dim, 1)
        if hasattr(block.attn, "s_qk"):
            plan[p + "attn.s_qk.param"] = ShardRule(0, 1)
            plan[p + "mlp.s_u.param"] = ShardRule(0, 1)
            plan[p + "mlp.s_v.param"] = ShardRule(0, 1)
    return plan


def _shard(full: torch.Tensor, rule: ShardRule, tp_size: int, tp_rank: int) -> torch.Tensor:
    return full.detach().index_select(rule.dim, rule.indices(full.shape[rule.dim], tp_size, tp_rank))


def parallelize(model: CausalLM, groups: ParallelGroups) -> CausalLM:
    """Replace `model`'s layers by tensor-parallel ones holding this rank's shards (in place).

    Every rank must have built the same full model (same seed), so shards of one replica
    fit together; the result computes exactly what the full model computes.
    """
    if groups.tp_size == 1:
        return model
    config: ModelConfig = model.config
    assert config.vocab_size is not None  # CausalLM.__init__ rejects an unresolved vocab_size
    check_tensor_parallel(
        groups.tp_size,
        groups.tp_size * groups.dp_size,
        n_head=config.n_head,
        vocab_size=config.vocab_size,
        mlp_width=config.mlp_width,
    )
    plan = tensor_parallel_plan(model)
    tp, rank, group = groups.tp_size, groups.tp_rank, groups.tp_group

    def shard(name: str) -> torch.Tensor:
        return _shard(model.get_parameter(name), plan[name], tp, rank)

    for i, block in enumerate(_blocks(model)):
        p = f"blocks.{i}."
        attn, mlp = block.attn, block.mlp
        attn.qkv = ColumnParallelProjection(attn.qkv, shard(p + "attn.qkv.weight"), group)
        attn.out = RowParallelProjection(attn.out, shard(p + "attn.out.weight"), group)
        mlp.up_gate = ColumnParallelProjection(mlp.up_gate, shard(p + "mlp.up_gate.weight"), group)
        mlp.down = RowParallelProjection(mlp.down, shard(p + "mlp.down.weight"), group)
        for name in (p + "attn.s_qk.param", p + "mlp.s_u.param", p + "mlp.s_v.param"):
            if name in plan:
                _replace_vector(model, name, shard(name))
    vocab_rule = plan["embed.weight"]
    vocab_start = int(vocab_rule.indices(config.vocab_size, tp, rank)[0])
    model.embed = VocabParallelEmbedding(model.embed, shard("embed.weight"), vocab_start, group)
    model.head = ColumnParallelProjection(model.head, shard("head.weight"), group)
    if "s_z.param" in plan:
        _replace_vector(model, "s_z.param", shard("s_z.param"))
    # Instance attributes: one replaces a method, one marks the model; nn.Module's typed __setattr__
    # (tensors and modules) does not describe either.
    patched: Any = model
    patched.cross_entropy = partial(vocab_parallel_cross_entropy, vocab_start=vocab_start, group=group)
    patched.tensor_parallel = groups
    return model


def _replace_vector(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module = model.get_submodule(name.rsplit(".", 1)[0])
    module.param = nn.Parameter(value.clone())
    mark_sharded(module.param, 0)


def merge_tensor_parallel(shards: list[dict[str, torch.Tensor]], model: CausalLM) -> dict[str, torch.Tensor]:
    """Full state dict from the tensor-parallel ranks' state dicts (rank order), for a full `model`
    of the same config (its shapes and plan; its values are not used). Raises NgptConfigError when a
    rank's weights do not fit that split (a missing parameter, another shape or dtype)."""
    plan = tensor_parallel_plan(model)
    tp = len(shards)
    merged = {}
    for name, full in model.state_dict().items():
        if name not in plan:
            merged[name] = _rank_shard(shards, 0, name, None).clone()
            continue
        rule = plan[name]
        size = full.shape[rule.dim]
        if size % (rule.blocks * tp):
            raise _unfit(
                f"the model's {name} has {size} along dim {rule.dim}, which does not split into {tp} tensor-parallel "
                f"rank(s){f' x {rule.blocks} blocks' if rule.blocks > 1 else ''}"
            )
        shape = full.shape[: rule.dim] + (size // tp,) + full.shape[rule.dim + 1 :]
        first = _rank_shard(shards, 0, name, shape)
        out = torch.empty(full.shape, dtype=first.dtype)
        for rank in range(tp):
            shard = _rank_shard(shards, rank, name, shape)
            if shard.dtype != first.dtype:
                raise _unfit(
                    f"tensor-parallel rank {rank} of {tp} holds {name} in {shard.dtype}, rank 0 in {first.dtype}"
                )
            out.index_copy_(rule.dim, rule.indices(size, tp, rank), shard)
        merged[name] = out
    return merged


def _rank_shard(
    shards: list[dict[str, torch.Tensor]], rank: int, name: str, shape: tuple[int, ...] | None
) -> torch.Tensor:
    """Rank `rank`'s slice of `name`, checked: an index_copy_ of a slice of another shape raised an IndexError
    traceback (a missing one a KeyError), and a shorter slice would have left rows of torch.empty in the merge."""
    shard = shards[rank].get(name)
    if not isinstance(shard, torch.Tensor):
        raise _unfit(f"tensor-parallel rank {rank} of {len(shards)} holds no {name}")
    if shape is not None and tuple(shard.shape) != tuple(shape):
        raise _unfit(
            f"tensor-parallel rank {rank} of {len(shards)} holds {name} of shape {list(shard.shape)}, where the "
            f"model's split over {len(shards)} rank(s) needs {list(shape)}"
        )
    return shard


def _unfit(problem: str) -> NgptConfigError:
    return NgptConfigError(
        f"the tensor-parallel checkpoint's weights do not fit its model config: {problem}. The files (mp_rank_XX, "
        "one per tensor-parallel rank) are damaged, altered or from another model, or its config.yaml is not the "
        "one it was trained with; use another checkpoint"
    )
