"""Ulysses sequence parallelism: each sequence is cut into S chunks, one per rank of a sequence-parallel group.

Every block runs on its rank's T/S positions, except the attention core: DeepSpeed's
`DistributedAttention` all-to-alls q, k and v so that each rank holds all T positions of H/S heads,
runs the model's own causal attention on them, and all-to-alls the output back (DeepSpeed-Ulysses,
arXiv 2309.14509). The model package knows nothing of it: `parallelize_sequence` swaps each
attention's `attend`, sets the model's `sequence_chunk` (RoPE at the chunk's absolute positions),
slices the full windows the trainer feeds to this rank's chunk, and replaces the loss.

Layout: rank = dp_rank * S + sp_rank. The S ranks of one sequence are adjacent (inside a node,
where the all-to-alls are cheap), and get the same sample from the data loader (its dp_rank).

Groups reach DeepSpeed through `SequenceParallelGroups` as its `mpu`, the protocol of DeepSpeed's own
`parallel_state_sp`: ZeRO then partitions and reduces over all data x sequence ranks and divides the
summed gradients by the data-parallel size only (summed over the sequence, averaged over the data).
The `sequence_parallel_size` key of the DeepSpeed JSON is never used: without an mpu DeepSpeed reduces
over the data-parallel ranks only, and the ranks of one sequence drift apart silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ngpt_ds.errors import NgptConfigError

SOURCE = "train.sequence_parallel_size"


def check_sequence_parallel(
    sp_size: int,
    world_size: int,
    *,
    n_head: int,
    seq_len: int,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
) -> None:
    """Every size sequence parallelism cuts must divide evenly, and it must not meet a mode it does not
    compose with; report all problems at once (before any process group)."""
    if sp_size == 1:
        return
    problems = []
    if world_size % sp_size:
        problems.append(
            f"world size {world_size} is not divisible by {SOURCE} = {sp_size}: start a multiple of {sp_size} ranks"
        )
    if n_head % sp_size:
        problems.append(
            f"model.n_head = {n_head} is not divisible by {SOURCE} = {sp_size} (the all-to-all gives each rank "
            f"n_head / {sp_size} whole heads); choose a size that divides it"
        )
    if seq_len % sp_size:
        problems.append(
            f"model.seq_len = {seq_len} is not divisible by {SOURCE} = {sp_size} (each rank holds seq_len / "
            f"{sp_size} positions); choose a size that divides it"
        )
    if tensor_parallel > 1:
        problems.append(
            f"train.tensor_parallel_size = {tensor_parallel} with {SOURCE} = {sp_size} is not supported (DeepSpeed "
            "takes one mpu, and its sequence-parallel protocol has no tensor-parallel group); use one of the two"
        )
    if pipeline_parallel > 1:
        problems.append(
            f"train.pipeline_parallel_size = {pipeline_parallel} with {SOURCE} = {sp_size} is not supported "
            "(DeepSpeed's pipeline engine takes its own topology, not a sequence-parallel mpu); use one of the two"
        )
    if problems:
        raise NgptConfigError("sequence parallelism: " + "; ".join(problems))


def deepspeed_config_for(ds_config: dict[str, Any], sp_size: int) -> str | None:
    """Adapt the DeepSpeed JSON (in place) to sequence parallelism; returns a note of what changed, or None.

    ZeRO 3's reduce-scatter path (`stage3.__avg_scatter_grads` in DeepSpeed 0.19) divides the summed
    gradients by the whole data x sequence group instead of the data-parallel size: every update would
    be 1/S too small. Its all-reduce path divides correctly, so `reduce_scatter` is set to false.
    """
    zero = ds_config.get("zero_optimization")
    if sp_size > 1 and isinstance(zero, dict) and zero.get("stage") == 3 and zero.get("zero_quantized_gradients"):
        # Its all-to-all reduction runs only with reduce_scatter: deepspeed.initialize stopped every rank in
        # "AssertionError: when enable all_to_all_reduce, reduce_scatter should also be enabled".
        raise NgptConfigError(
            f"{SOURCE} = {sp_size} with ZeRO 3: zero_optimization.zero_quantized_gradients needs reduce_scatter, "
            "which sequence parallelism turns off (DeepSpeed's ZeRO-3 reduce-scatter would make every update "
            f"{sp_size}x too small); remove zero_quantized_gradients from the DeepSpeed config"
        )
    if sp_size == 1 or not isinstance(zero, dict) or zero.get("stage") != 3 or zero.get("reduce_scatter") is False:
        return None
    was = "true" if zero.get("reduce_scatter") is True else "left out (DeepSpeed's default: true)"
    zero["reduce_scatter"] = False
    return (
        f"{SOURCE} = {sp_size} with ZeRO 3: set zero_optimization.reduce_scatter to false in the effective "
        f"config (it was {was}); DeepSpeed's ZeRO-3 reduce-scatter would divide the gradients by the data x "
        f"sequence ranks, making every update {sp_size}x too small"
    )


@dataclass(frozen=True)
class SequenceLayout:
    """Which ranks form which groups, computed without a process group (the dry run prints it)."""

    world_size: int
    sp_size: int

    @property
    def dp_size(self) -> int:
        return self.world_size // self.sp_size

    def sequence_groups(self) -> list[list[int]]:
        """Ranks holding the chunks of one sequence: adjacent."""
        return [list(range(d * self.sp_size, (d + 1) * self.sp_size)) for d in range(self.dp_size)]

    def data_groups(self) -> list[list[int]]:
        """Ranks holding the same chunk of different samples."""
        return [list(range(s, self.world_size, self.sp_size)) for s in range(self.sp_size)]

    def coordinates(self, rank: int) -> tuple[int, int]:
        """(dp_rank, sp_rank) of a global rank."""
        return divmod(rank, self.sp_size)


@dataclass
class SequenceParallelGroups:
    """This rank's data- and sequence-parallel coordinates and groups; DeepSpeed's `mpu`.

    The trainer reads dp_rank / dp_size (which sample the loader gives) and tp_size like
    ngpt_ds.parallel.ParallelGroups. DeepSpeed reads the methods below: exactly those of its own
    parallel_state_sp module (a module of globals), whose code paths DeepSpeed tests.
    """

    sp_size: int
    dp_size: int
    sp_rank: int
    dp_rank: int
    sp_group: dist.ProcessGroup
    dp_group: dist.ProcessGroup | None
    seq_dp_group: dist.ProcessGroup | None
    sp_ranks: list[int]
    dp_ranks: list[int]
    seq_dp_ranks: list[int]
    tp_size: int = 1
    tp_rank: int = 0

    # ---- DeepSpeed's sequence-parallel mpu protocol (deepspeed.runtime.sequence_parallel.parallel_state_sp) ----
    def initialize_sequence_parallel(self, sequence_parallel_size: int) -> None:
        """Never called: DeepSpeed tests `hasattr(mpu, "initialize_sequence_parallel")` to tell a
        sequence-parallel mpu from a Megatron one (ZeRO then leaves out any model-parallel group)."""
        raise RuntimeError("SequenceParallelGroups are created by create_sequence_groups")

    def get_sequence_parallel_group(self) -> dist.ProcessGroup:
        return self.sp_group

    def get_sequence_parallel_world_size(self) -> int:
        return self.sp_size

    def get_sequence_parallel_rank(self) -> int:
        return self.sp_rank

    def get_sequence_data_parallel_group(self) -> dist.ProcessGroup | None:
        return self.seq_dp_group

    def get_sequence_data_parallel_world_size(self) -> int:
        return self.sp_size * self.dp_size

    def get_sequence_data_parallel_rank(self) -> int:
        return self.dp_rank * self.sp_size + self.sp_rank

    # As parallel_state_sp: the model-parallel names alias the sequence group. ZeRO ignores them for a
    # sequence-parallel mpu; ZeRO 0's gradient clipping counts each norm once (on sp_rank 0) and sums.
    get_model_parallel_rank = get_sequence_parallel_rank
    get_model_parallel_world_size = get_sequence_parallel_world_size
    get_model_parallel_group = get_sequence_parallel_group

    def get_tensor_model_parallel_world_size(self) -> int:
        """1: the weights are whole on every rank. Without it DeepSpeed 0.19.8 records the alias above, S,
        as the tensor-parallel size in every checkpoint's `parallel_dims` (its universal converter then
        expects S model-state files and refuses the checkpoint), and its universal load, which calls this
        method by name, fails. No `get_tensor_model_parallel_rank`: the gradient clipping above relies on
        the rank alias."""
        return 1

    # No get_data_parallel_* methods, as parallel_state_sp: with one, ZeRO 3 (parameter_offload.py) would
    # partition the parameters over the data-parallel ranks only, not over all data x sequence ranks.


def create_sequence_groups(sp_size: int) -> SequenceParallelGroups:
    """Create the sequence-, data- and data x sequence-parallel groups (every rank calls this, in order)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % sp_size:
        raise NgptConfigError(f"world size {world} is not divisible by {SOURCE} = {sp_size}")
    layout = SequenceLayout(world, sp_size)
    sp_group = dp_group = None
    sp_ranks = dp_ranks = []
    for ranks in layout.sequence_groups():
        group = dist.new_group(ranks)
        if rank in ranks:
            sp_group, sp_ranks = group, ranks
    for ranks in layout.data_groups():
        group = dist.new_group(ranks)
        if rank in ranks:
            dp_group, dp_ranks = group, ranks
    dp_rank, sp_rank = layout.coordinates(rank)
    assert sp_group is not None  # the sequence groups cover every rank
    return SequenceParallelGroups(
        sp_size=sp_size,
        dp_size=layout.dp_size,
        sp_rank=sp_rank,
        dp_rank=dp_rank,
        sp_group=sp_group,
        dp_group=dp_group,
        seq_dp_group=dist.new_group(list(range(world))),
        sp_ranks=sp_ranks,
        dp_ranks=dp_ranks,
        seq_dp_ranks=list(range(world)),
    )


class UlyssesAttention:
    """`attend(q, k, v)` over a sequence-parallel group: q, k, v [B, T/S, H, D] of this rank's chunk ->
    all-to-all -> [B, T, H/S, D] -> the model's own attention core -> all-to-all back -> [B, T/S, H, D].

    A plain callable, not an nn.Module, so the attention module's parameters and state dict stay the
    same (checkpoints of sequence-parallel and plain runs are interchangeable)."""

    def __init__(self, local_attend: Any, group: dist.ProcessGroup):
        from deepspeed.sequence.layer import DistributedAttention

        self.local_attend = local_attend
        # Batch-first tensors: scatter the heads (dim 2), gather the positions (dim 1).
        self.distributed = DistributedAttention(local_attend, group, scatter_idx=2, gather_idx=1)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.distributed(q, k, v, batch_dim_idx=0)


def sequence_parallel_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, *, group: dist.ProcessGroup
) -> torch.Tensor:
    """The loss of this rank's chunk, normalized by the token count of the FULL sequences.

    The gradient is that of sum(local token losses) / N_full, so the gradients of the S ranks of a
    sequence sum to the gradient of the full sequence's mean loss (what DeepSpeed computes when it
    sums over the sequence group). A local mean would make them S times too large. The value returned
    is the full sequences' mean loss (one all-reduce of two numbers), so every rank logs and evaluates
    the true loss. Targets of -1 are ignored, as in CausalLM.cross_entropy.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    flat_targets = targets.flatten()
    local_sum = F.cross_entropy(logits.flatten(0, 1), flat_targets, ignore_index=-1, reduction="sum")
    totals = torch.stack([local_sum.detach(), (flat_targets != -1).sum().to(local_sum.dtype)])
    dist.all_reduce(totals, group=group)
    share = local_sum / totals[1]
    return share + (totals[0] / totals[1] - share.detach())


def _chunk(tensor: Any, sp_size: int, sp_rank: int) -> Any:
    if not torch.is_tensor(tensor) or tensor.dim() < 2:
        return tensor
    length = tensor.shape[1]
    if length % sp_size:
        raise ValueError(f"sequence length {length} is not divisible by {SOURCE} = {sp_size}")
    size = length // sp_size
    return tensor[:, sp_rank * size : (sp_rank + 1) * size]


def parallelize_sequence(model: torch.nn.Module, groups: SequenceParallelGroups) -> torch.nn.Module:
    """Make a built CausalLM sequence-parallel over `groups` (in place); returns it.

    Afterwards `model(token_ids [B, T], targets [B, T])` takes the FULL windows (every rank of a
    sequence group the same ones), runs on this rank's chunk of T/S positions, and returns (the chunk's
    logits [B, T/S, V], the full windows' mean loss). Parameters are untouched.
    """
    from ngpt_ds.model.blocks import CausalSelfAttention

    if groups.sp_size == 1:
        return model
    if getattr(model, "sequence_parallel", None) is not None:
        raise ValueError("this model is already sequence-parallel")
    # Instance attributes that replace methods (attend, cross_entropy) or mark the model; nn.Module's
    # typed __setattr__ (tensors and modules) describes none of them.
    patched: Any = model
    for module in model.modules():
        if isinstance(module, CausalSelfAttention):
            cast(Any, module).attend = UlyssesAttention(module.attend, groups.sp_group)
    patched.sequence_chunk = groups.sp_rank

    def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return sequence_parallel_cross_entropy(logits, targets, group=groups.sp_group)

    patched.cross_entropy = cross_entropy

    def take_chunk(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if kwargs.get("cache") is not None:
            raise ValueError("a sequence-parallel model does not decode with a KV cache; load the checkpoint plainly")
        args = tuple(_chunk(a, groups.sp_size, groups.sp_rank) for a in args)
        kwargs = {k: _chunk(v, groups.sp_size, groups.sp_rank) for k, v in kwargs.items()}
        return args, kwargs

    model.register_forward_pre_hook(take_chunk, with_kwargs=True)
    patched.sequence_parallel = groups
    return model
