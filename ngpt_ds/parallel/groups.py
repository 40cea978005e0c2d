"""Tensor x data parallel process groups, and the `mpu` object DeepSpeed takes.

Layout: rank = dp_rank * tp_size + tp_rank. The tp_size ranks of one model replica are
adjacent, so with tp_size <= GPUs per node a tensor-parallel group stays inside a node
(its all-reduces are on the fast link) and only the data-parallel traffic crosses nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch.distributed as dist

from ngpt_ds.errors import NgptConfigError

if TYPE_CHECKING:
    from ngpt_ds.parallel.sequence import SequenceParallelGroups


@dataclass
class ParallelGroups:
    """This rank's tensor- and data-parallel coordinates and groups.

    Satisfies DeepSpeed's `mpu` protocol, so ZeRO partitions and reduces gradients over
    the data-parallel group only and sums gradient norms over the tensor-parallel group.
    """

    tp_size: int
    dp_size: int
    tp_rank: int
    dp_rank: int
    tp_group: dist.ProcessGroup | None
    dp_group: dist.ProcessGroup | None
    tp_ranks: list[int]
    dp_ranks: list[int]
    sp_size: int = 1
    """Always 1: these groups never split sequences. Present, as SequenceParallelGroups carries
    tp_size 1, so that the trainer reads both kinds alike."""

    # ---- DeepSpeed / Megatron mpu protocol ------------------------------------------------
    def get_tensor_model_parallel_rank(self) -> int:
        return self.tp_rank

    def get_tensor_model_parallel_world_size(self) -> int:
        return self.tp_size

    def get_tensor_model_parallel_group(self) -> dist.ProcessGroup | None:
        return self.tp_group

    def get_tensor_model_parallel_src_rank(self) -> int:
        return self.tp_ranks[0]

    get_model_parallel_rank = get_tensor_model_parallel_rank
    get_model_parallel_world_size = get_tensor_model_parallel_world_size
    get_model_parallel_group = get_tensor_model_parallel_group
    get_slice_parallel_rank = get_tensor_model_parallel_rank
    get_slice_parallel_world_size = get_tensor_model_parallel_world_size
    get_slice_parallel_group = get_tensor_model_parallel_group

    def get_data_parallel_rank(self) -> int:
        return self.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self.dp_size

    def get_data_parallel_group(self) -> dist.ProcessGroup | None:
        return self.dp_group

    def get_data_parallel_group_ranks(self) -> list[int]:
        return self.dp_ranks

    def get_pipeline_model_parallel_world_size(self) -> int:
        return 1

    def get_pipeline_model_parallel_rank(self) -> int:
        return 0


def check_tensor_parallel(
    tp_size: int,
    world_size: int,
    *,
    n_head: int,
    vocab_size: int,
    mlp_width: int,
    source: str = "train.tensor_parallel_size",
) -> None:
    """Every size a tensor-parallel split cuts must divide evenly; report all that do not."""
    problems = []
    if tp_size < 1:
        problems.append(f"{source} = {tp_size}: must be a positive integer")
    else:
        if world_size % tp_size:
            problems.append(
                f"world size {world_size} is not divisible by {source} = {tp_size}: start a multiple "
                f"of {tp_size} processes"
            )
        for name, value, what in (
            ("model.n_head", n_head, "heads are never split"),
            ("model.vocab_size", vocab_size, "the embeddings and output head split the vocabulary"),
            ("model.mlp_hidden (SwiGLU width)", mlp_width, "the MLP splits its channels"),
        ):
            if value % tp_size:
                # The vocabulary is the dataset's tokenizer's: a new one is the other way out.
                retokenize = (
                    f", or prepare the data again (launch/prepare_data.py) with a --vocab-size divisible by {tp_size}"
                    if name == "model.vocab_size"
                    else ""
                )
                problems.append(
                    f"{name} = {value} is not divisible by {source} = {tp_size} ({what}); choose "
                    f"a tensor-parallel size that divides it{retokenize}"
                )
    if problems:
        raise NgptConfigError("tensor parallelism: " + "; ".join(problems))


def create_groups(tp_size: int, sp_size: int = 1) -> ParallelGroups | SequenceParallelGroups:
    """Create all tensor- and data-parallel groups (every rank calls this, in the same order).
    sp_size > 1 (tp_size 1): sequence x data-parallel groups (ngpt_ds.parallel.sequence) instead."""
    if sp_size > 1:
        from ngpt_ds.parallel.sequence import create_sequence_groups

        return create_sequence_groups(sp_size)
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % tp_size:
        raise NgptConfigError(f"world size {world} is not divisible by tensor_parallel_size {tp_size}")
    dp_size = world // tp_size
    tp_group = dp_group = None
    tp_ranks = dp_ranks = []
    for replica in range(dp_size):
        ranks = list(range(replica * tp_size, (replica + 1) * tp_size))
        group = dist.new_group(ranks)
        if rank in ranks:
            tp_group, tp_ranks = group, ranks
    for shard in range(tp_size):
        ranks = list(range(shard, world, tp_size))
        group = dist.new_group(ranks)
        if rank in ranks:
            dp_group, dp_ranks = group, ranks
    return ParallelGroups(
        tp_size=tp_size,
        dp_size=dp_size,
        tp_rank=rank % tp_size,
        dp_rank=rank // tp_size,
        tp_group=tp_group,
        dp_group=dp_group,
        tp_ranks=tp_ranks,
        dp_ranks=dp_ranks,
    )
