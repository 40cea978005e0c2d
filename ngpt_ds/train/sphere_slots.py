"""Where each sphere matrix's norm vectors sit in a renormalization unit's sum buffer (ngpt_ds.train.sphere_masters).

Every rank lays the buffer out the same way: one slot per norm vector (a row if the matrix is normalized along
dim 1, a column if along dim 0), matrices in model order, so the all-reduce adds matching sums.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ngpt_ds.model.sphere import SphereMatrix
from ngpt_ds.train.sphere_pieces import MasterPiece


def full_shape(param: nn.Parameter) -> torch.Size:
    """A parameter's unpartitioned shape (ZeRO 3 leaves an empty placeholder in .data)."""
    return param.ds_shape if hasattr(param, "ds_shape") else param.shape


def slot_layout(matrices: list[SphereMatrix]) -> tuple[dict[int, int], int]:
    """param id -> first slot, and the total: one slot per norm vector, in model order."""
    slots, total = {}, 0
    for m in matrices:
        slots[id(m.param)] = total
        total += full_shape(m.param)[1 - m.norm_dim]
    return slots, total


def spans(matrices: list[SphereMatrix], slots: dict[int, int]) -> list[tuple[str, int, int]]:
    """(name, first slot, end slot) of each matrix, for naming a broken one."""
    return [(m.name, slots[id(m.param)], slots[id(m.param)] + full_shape(m.param)[1 - m.norm_dim]) for m in matrices]


def reduction_group(group: dist.ProcessGroup | None) -> dist.ProcessGroup | None:
    """The group to sum partial norms over, or None when it has one rank (nothing is cut)."""
    return group if dist.get_world_size(group=group) > 1 else None


def master_piece(matrix: SphereMatrix, values: torch.Tensor, start: int, slot: int) -> MasterPiece:
    """`values` (flatten(W)[start : start + values.numel()]) as a piece of `matrix` whose vectors begin at `slot`."""
    rows, cols = full_shape(matrix.param)
    return MasterPiece(values=values, start=start, rows=rows, cols=cols, norm_dim=matrix.norm_dim, slot=slot)
