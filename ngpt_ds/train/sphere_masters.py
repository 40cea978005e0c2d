"""Where DeepSpeed keeps the fp32 master weights of nGPT's sphere matrices, for the hypersphere hook.

`locate_masters` finds, in the optimizer DeepSpeed built, this rank's fp32 master pieces of every trainable
sphere matrix and groups them into the renormalization units of ngpt_ds.train.sphere_pieces (one per set of
masters one torch optimizer step updates), with the way to refresh the 16-bit working copy from them. The hook
(ngpt_ds.train.hypersphere) renormalizes through what it returns and never looks inside the optimizer itself.

The DeepSpeed optimizer internals it reads (checked against deepspeed 0.19.8; the hook's own few are listed
in its header):
  no ZeRO, fp32        the torch optimizer holds the model parameters
  no ZeRO, bf16/fp16   FP16_UnfusedOptimizer.fp32_groups[i][j] <-> fp16_groups[i][j] (a torch optimizer);
                       FP16_Optimizer (the JSON's "optimizer" block: DeepSpeed's FusedAdam):
                       fp32_groups_flat[i] laid out as fp16_groups_flat[i] (see _flat_whole_masters)
  ZeRO 1/2             param._hp_mapping: hp_fragment (fp32 view), lp_fragment_address.start, checked
                       against the parameter's place in bit16_groups_flat (see _check_link);
                       update_lp_params to refresh the working copy
  BF16_Optimizer       the same _hp_mapping (ZeRO 1 + bf16 + fp32 gradient accumulation), bf16_groups_flat
  ZeRO 3               fp32_partitioned_groups_flat[g].narrow(off, n), grad_position[param id],
                       start = partition rank * partition_numel; _reassign_or_swap_out_partitioned_parameters
                       and persistent_parameters to refresh the working copy
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from ngpt_ds.model.sphere import SphereMatrix
from ngpt_ds.train.sphere_pieces import StepUnit
from ngpt_ds.train.sphere_slots import master_piece, reduction_group, slot_layout, spans

if TYPE_CHECKING:
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer


def _no_refresh() -> None:
    """The working copy is the master (ZeRO 0 in fp32), or there is nothing to renormalize."""


@dataclass
class LocatedMasters:
    """This rank's fp32 masters of the trainable sphere matrices, as `locate_masters` found them."""

    units: list[StepUnit] = field(default_factory=list)
    """the renormalization units: one sum buffer and one all-reduce each."""
    owners: list[torch.Tensor] = field(default_factory=list)
    """the tensors the torch optimizer steps, which the units' pieces are views of (DeepSpeed swaps their .data
    when it moves them)."""
    whole_masters: dict[int, torch.Tensor] = field(default_factory=dict)
    """param id -> its whole fp32 master, where that is not the parameter itself (ZeRO 0 in bf16/fp16)."""
    refresh_working_copy: Callable[[], None] = _no_refresh
    """copies the masters into the 16-bit working copy (after a renormalization outside a step)."""


def locate_masters(opt: object, kept: list[SphereMatrix], comm_device: torch.device) -> LocatedMasters:
    """Locate the master pieces of the sphere matrices `kept` in DeepSpeed's optimizer `opt` (engine.optimizer).

    comm_device: where the units' all-reduces run. Raises NotImplementedError for an optimizer, a layout or a
    master dtype the renormalization cannot trust.
    """
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
    from deepspeed.runtime.fp16.fused_optimizer import FP16_Optimizer
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    if not kept:
        return LocatedMasters()
    if isinstance(opt, DeepSpeedZeroOptimizer_Stage3):
        located = _locate_zero3(opt, kept, comm_device)
    elif isinstance(opt, DeepSpeedZeroOptimizer):
        located = _locate_flat_partitions(
            opt,
            kept,
            comm_device,
            opt.bit16_groups,
            opt.bit16_groups_flat,
            opt.single_partition_of_fp32_groups,
            opt.real_dp_process_group,
        )
    elif isinstance(opt, BF16_Optimizer):
        located = _locate_flat_partitions(
            opt,
            kept,
            comm_device,
            opt.bf16_groups,
            opt.bf16_groups_flat,
            opt.fp32_groups_flat_partition,
            opt.real_dp_process_group,
        )
    elif isinstance(opt, FP16_UnfusedOptimizer):
        masters = {
            id(lp): hp
            for lp_group, hp_group in zip(opt.fp16_groups, opt.fp32_groups)
            for lp, hp in zip(lp_group, hp_group)
        }
        located = _locate_whole(kept, comm_device, masters)

        def refresh():
            for lp_group, hp_group in zip(opt.fp16_groups, opt.fp32_groups):
                for lp, hp in zip(lp_group, hp_group):
                    lp.data.copy_(hp.data)

        located.whole_masters, located.refresh_working_copy = masters, refresh
    elif isinstance(opt, FP16_Optimizer):
        masters, pairs = _flat_whole_masters(opt)
        located = _locate_whole(kept, comm_device, masters, owners=opt.fp32_groups_flat)

        def refresh_flat():
            for lp, hp in pairs:
                lp.data.copy_(hp)

        located.whole_masters, located.refresh_working_copy = masters, refresh_flat
    elif isinstance(opt, torch.optim.Optimizer):
        located = _locate_whole(kept, comm_device, {id(m.param): m.param for m in kept})
    else:
        raise NotImplementedError(
            f"nGPT renormalization does not know DeepSpeed optimizer "
            f"{type(opt).__name__}; use ZeRO stage 0-3 with a torch optimizer"
        )
    not_fp32 = sorted({str(piece.values.dtype) for unit in located.units for piece in unit.pieces} - {"torch.float32"})
    if not_fp32:  # the config check refuses DeepSpeed's 16-bit masters; this is what a new route would reach
        raise NotImplementedError(
            f"nGPT renormalization needs fp32 master weights; {type(opt).__name__} keeps them in "
            f"{', '.join(not_fp32)} (remove bf16_master_weights_and_grads / fp16_master_weights_and_grads "
            "from the DeepSpeed JSON)"
        )
    return located


def _locate_whole(
    kept: list[SphereMatrix],
    comm_device: torch.device,
    masters: dict[int, torch.Tensor],
    owners: list[torch.Tensor] | None = None,
) -> LocatedMasters:
    """Every rank holds every matrix whole: no communication. owners: the tensors the torch optimizer steps
    (default: the masters themselves)."""
    slots, total = slot_layout(kept)
    pieces = [master_piece(m, masters[id(m.param)].data.view(-1), 0, slots[id(m.param)]) for m in kept]
    device = pieces[0].values.device
    stepped = list(masters.values() if owners is None else owners)
    unit = StepUnit({id(t) for t in stepped}, total, pieces, None, device, comm_device, spans(kept, slots))
    return LocatedMasters(units=[unit], owners=stepped)


def _locate_flat_partitions(
    opt: DeepSpeedZeroOptimizer | BF16_Optimizer,
    kept: list[SphereMatrix],
    comm_device: torch.device,
    lp_groups: list[list[nn.Parameter]],
    lp_flats: list[torch.Tensor],
    hp_partitions: list[torch.Tensor],
    dp_groups: list[dist.ProcessGroup],
) -> LocatedMasters:
    """ZeRO 1/2 and BF16_Optimizer: group i's master is one flat fp32 partition per rank, laid out as
    the flat bit16 group `lp_flats[i]` (the model's parameters are views of it)."""
    located = LocatedMasters(refresh_working_copy=opt.update_lp_params)
    for i, (lp_group, hp_partition) in enumerate(zip(lp_groups, hp_partitions)):
        in_group = {id(p) for p in lp_group}
        matrices = [m for m in kept if id(m.param) in in_group]
        if not matrices:
            continue
        slots, total = slot_layout(matrices)
        partition_start = dist.get_rank(group=dp_groups[i]) * hp_partition.numel()
        pieces = []
        for m in matrices:
            mapping = getattr(m.param, "_hp_mapping", None)
            _check_link(opt, m, mapping, lp_flats[i], partition_start, hp_partition.numel())
            if mapping is not None:  # None: this rank owns no part of the matrix
                pieces.append(
                    master_piece(m, mapping.hp_fragment.data, mapping.lp_fragment_address.start, slots[id(m.param)])
                )
        located.owners.append(hp_partition)
        located.units.append(
            StepUnit(
                {id(hp_partition)},
                total,
                pieces,
                reduction_group(dp_groups[i]),
                hp_partition.device,
                comm_device,
                spans(matrices, slots),
            )
        )
    return located


def _locate_zero3(
    opt: DeepSpeedZeroOptimizer_Stage3, kept: list[SphereMatrix], comm_device: torch.device
) -> LocatedMasters:
    """ZeRO 3: each parameter is cut evenly over the ranks; rank r holds
    flatten(W)[r * P : (r + 1) * P] (the last rank padded) inside sub-group g's flat fp32 tensor."""

    def refresh():
        for g in range(len(opt.fp16_groups)):
            opt._reassign_or_swap_out_partitioned_parameters(g)
        if opt.persistent_parameters:
            opt.persistent_parameters[0].all_gather(opt.persistent_parameters)

    located = LocatedMasters(refresh_working_copy=refresh)
    for g, lp_group in enumerate(opt.fp16_groups):
        in_group = {id(p) for p in lp_group}
        matrices = [m for m in kept if id(m.param) in in_group]  # model order on every rank
        if not matrices:
            continue
        slots, total = slot_layout(matrices)
        flat = opt.fp32_partitioned_groups_flat[g]
        pieces = []
        for m in matrices:
            p = m.param
            _, offset, partition_numel = opt.grad_position[opt.get_param_id(p)]
            start = opt._get_param_partition_rank(p) * partition_numel
            valid = max(0, min(partition_numel, p.ds_numel - start))  # type: ignore[attr-defined]  # ZeRO-3 sets it
            if valid:
                pieces.append(master_piece(m, flat.data.narrow(0, offset, valid), start, slots[id(p)]))
        group = reduction_group(opt._get_param_partition_group(matrices[0].param))
        located.owners.append(flat)
        located.units.append(
            StepUnit({id(flat)}, total, pieces, group, flat.device, comm_device, spans(matrices, slots))
        )
    return located


def _check_link(
    opt: object, matrix: SphereMatrix, mapping: object, lp_flat: torch.Tensor, partition_start: int, partition_size: int
) -> None:
    """Raise unless DeepSpeed's link of `matrix` to its fp32 master slice (`_hp_mapping`, or None for no slice on
    this rank) is where the matrix lies in the flat bit16 group, which the fp32 partitions copy element for
    element. DeepSpeed 0.19 links in model order, and lays the group out in another with ZeRO 1/2's
    round_robin_gradients: the hook then renormalized other parameters' values, the weights left the sphere
    (0.17 after 3 steps on 2 ranks) and the deviation it reported, read through the same link, stayed 1.5e-7.
    The startup check refuses that key (ngpt_ds.train.ds_masters); this catches any other route to it. A
    parameter that is not a view of the flat group cannot be placed, and is left to the link."""
    data = matrix.param.data
    if data.untyped_storage().data_ptr() != lp_flat.untyped_storage().data_ptr():
        return
    offset = (data.data_ptr() - lp_flat.data_ptr()) // data.element_size()
    first = max(offset, partition_start)
    numel = min(offset + data.numel(), partition_start + partition_size) - first
    if numel > 0:  # this rank's partition holds flatten(W)[first - offset :][:numel] at first - partition_start
        expected: tuple[int, int, int] | None = (first - offset, first - partition_start, numel)
    else:
        expected = None
    linked = None
    if mapping is not None:
        lp, hp = mapping.lp_fragment_address, mapping.hp_fragment_address  # type: ignore[attr-defined]
        linked = (lp.start, hp.start, lp.numel)
    if linked != expected:
        raise NotImplementedError(
            f"nGPT renormalization cannot trust {type(opt).__name__}'s link of {matrix.name} to its fp32 master "
            f"weights: it links elements (start in the matrix, start in this rank's partition, count) {linked}, "
            f"but the matrix lies at {expected} of the flat parameter group the masters copy. Renormalizing "
            "through it would rescale other parameters' values. DeepSpeed 0.19 does this under "
            "zero_optimization.round_robin_gradients: remove it from the DeepSpeed JSON"
        )


def _flat_whole_masters(opt: object) -> tuple[dict[int, torch.Tensor], list[tuple[nn.Parameter, torch.Tensor]]]:
    """FP16_Optimizer (ZeRO 0 in bf16/fp16 with DeepSpeed's own optimizer, FusedAdam): group i's fp32 master is one
    flat tensor, fp32_groups_flat[i], laid out as the flat 16-bit group fp16_groups_flat[i] whose views the model's
    parameters are (concatenated in order, no padding). Returns param id -> its fp32 master view, and the (working
    copy, master) pairs. Raise if a parameter is not where that layout puts it: renormalizing through the layout
    would rescale other parameters' values."""
    masters: dict[int, torch.Tensor] = {}
    pairs: list[tuple[nn.Parameter, torch.Tensor]] = []
    groups = zip(opt.fp16_groups, opt.fp16_groups_flat, opt.fp32_groups_flat)  # type: ignore[attr-defined]
    for lp_group, lp_flat, hp_flat in groups:
        offset = 0
        for lp in lp_group:
            data = lp.data
            placed = (
                data.untyped_storage().data_ptr() == lp_flat.untyped_storage().data_ptr()
                and data.data_ptr() == lp_flat.data_ptr() + offset * data.element_size()
                and data.is_contiguous()
                and hp_flat.numel() == lp_flat.numel()
            )
            if not placed:
                raise NotImplementedError(
                    f"nGPT renormalization cannot place a parameter of {type(opt).__name__} in its flat fp32 master "
                    f"weights (element {offset} of {lp_flat.numel()}): this DeepSpeed version lays them out otherwise. "
                    "Pass a torch optimizer to deepspeed.initialize instead of the DeepSpeed JSON's optimizer block"
                )
            hp = hp_flat.data.narrow(0, offset, data.numel()).view_as(data)
            masters[id(lp)] = hp
            pairs.append((lp, hp))
            offset += data.numel()
    return masters, pairs
