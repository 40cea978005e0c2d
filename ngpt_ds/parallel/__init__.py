"""Tensor parallelism for nGPT and GPT: process groups, sharded layers, shard/merge plans.

The model package stays unaware of it: `parallelize` swaps a built model's layers for
sharded ones, and the trainer hands the groups to DeepSpeed as its `mpu`.
"""

from ngpt_ds.parallel.groups import ParallelGroups, check_tensor_parallel, create_groups
from ngpt_ds.parallel.shard import merge_tensor_parallel, parallelize, tensor_parallel_plan

__all__ = [
    "ParallelGroups",
    "check_tensor_parallel",
    "create_groups",
    "merge_tensor_parallel",
    "parallelize",
    "tensor_parallel_plan",
]
