"""The arithmetic of renormalizing sphere matrices cut into flat pieces, with no DeepSpeed in it.

ZeRO keeps each rank's fp32 masters as a slice of a flattened parameter group, so a slice can begin and end
mid-row. A `MasterPiece` is one matrix's part of such a slice; a `StepUnit` is the matrices one optimizer
step updates, with one sum buffer (a float per norm vector) all-reduced over the data-parallel group. The
hook (ngpt_ds.train.hypersphere) finds the pieces in DeepSpeed's optimizer; this module only does the sums
and the scaling, W <- W / ||W|| along each matrix's declared dim (paper §2.6).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ngpt_ds.train.collectives import all_reduce_on

#: Squared norms are clamped to this before rsqrt, so a zero vector is scaled by a finite
#: factor and stays zero (rsqrt(0) = inf, and 0 * inf = NaN).
TINY_SQUARED_NORM = torch.finfo(torch.float32).tiny


@dataclass
class MasterPiece:
    """This rank's fp32 master values of one sphere matrix W [rows, cols].

    `values` is a 1-D view of W.flatten()[start : start + values.numel()] in the
    optimizer's master storage. `slot` is where W's norm vectors (its rows if
    norm_dim == 1, its columns if norm_dim == 0) begin in the group's sum buffer.
    """

    values: torch.Tensor
    start: int
    rows: int
    cols: int
    norm_dim: int
    slot: int

    _parts: tuple | None = field(default=None, init=False, repr=False, compare=False)
    """`_split`'s views, with the `values` they were cut from: the hook runs add_squares and scale on every
    piece at every optimizer step, and cutting the same views anew each time was Python and dispatcher work
    only (docs/benchmarks.md, "What was changed, and what it gave", `bench/hook_path.py`)."""

    def _split(self):
        """(head, body, tail, first_row, first_col, body_row): the piece's partial first row,
        its whole rows as a [k, cols] view, and its partial last row. Cut once per `values` tensor."""
        parts = self._parts
        if parts is None or parts[0] is not self.values:
            parts = (self.values, *self._cut())
            self._parts = parts
        return parts[1:]

    def _cut(self):
        n, cols = self.values.numel(), self.cols
        first_row, first_col = divmod(self.start, cols)
        head_len = 0 if first_col == 0 else min(cols - first_col, n)
        k = (n - head_len) // cols
        head = self.values[:head_len]
        body = self.values[head_len : head_len + k * cols].view(k, cols)
        tail = self.values[head_len + k * cols :]
        body_row = first_row + (1 if head_len else 0)
        return head, body, tail, first_row, first_col, body_row

    def add_squares(self, sums: torch.Tensor) -> None:
        """sums[slot + v] += sum of this piece's squared entries of norm vector v."""
        head, body, tail, first_row, first_col, body_row = self._split()
        s = self.slot
        if self.norm_dim == 1:  # rows
            if head.numel():
                sums[s + first_row] += head.dot(head)
            if body.numel():
                # The squares in place, added into the slots' view: `sums[...] += norms.square()` made a second
                # [k] tensor and wrote the slice back through __setitem__; the same values.
                norms = torch.linalg.vector_norm(body, dim=1)
                torch.square(norms, out=norms)
                sums[s + body_row : s + body_row + body.shape[0]].add_(norms)
            if tail.numel():
                sums[s + body_row + body.shape[0]] += tail.dot(tail)
        else:  # columns
            if head.numel():
                sums[s + first_col : s + first_col + head.numel()] += head.square()
            if body.numel():
                # Not vector_norm(body, dim=0): along the strided dim it measured ~10x slower on CPU
                # (12.5 against 1.2 ms for a 1024 x 4096 fp32 down projection; docs/benchmarks.md).
                sums[s : s + self.cols] += torch.linalg.vecdot(body, body, dim=0)
            if tail.numel():
                sums[s : s + tail.numel()] += tail.square()

    def scale(self, inv_norms: torch.Tensor) -> None:
        """Multiply every entry by 1 / ||its norm vector||."""
        targets, factors = self.scale_pairs(inv_norms)
        for target, factor in zip(targets, factors):
            target.mul_(factor)

    def scale_pairs(self, inv_norms: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The views of this piece and the factors (broadcast over them) that `scale` multiplies them by in
        place: `scale_all` runs the products of many pieces in one `torch._foreach_mul_`."""
        head, body, tail, first_row, first_col, body_row = self._split()
        s = self.slot
        targets: list[torch.Tensor] = []
        factors: list[torch.Tensor] = []
        if self.norm_dim == 1:
            if head.numel():
                targets.append(head)
                factors.append(inv_norms[s + first_row])
            if body.numel():
                targets.append(body)
                factors.append(inv_norms[s + body_row : s + body_row + body.shape[0]].unsqueeze(1))
            if tail.numel():
                targets.append(tail)
                factors.append(inv_norms[s + body_row + body.shape[0]])
        else:
            if head.numel():
                targets.append(head)
                factors.append(inv_norms[s + first_col : s + first_col + head.numel()])
            if body.numel():
                targets.append(body)
                factors.append(inv_norms[s : s + self.cols])
            if tail.numel():
                targets.append(tail)
                factors.append(inv_norms[s : s + tail.numel()])
        return targets, factors


def scale_all(pieces: list[MasterPiece], inv_norms: torch.Tensor) -> None:
    """`piece.scale(inv_norms)` for every piece, as one `torch._foreach_mul_` over all their views: the same
    products, bit for bit, in one operator call instead of one per view (docs/benchmarks.md, "What was
    changed, and what it gave", `bench/hook_path.py`). The views of one piece never overlap another's."""
    targets: list[torch.Tensor] = []
    factors: list[torch.Tensor] = []
    for piece in pieces:
        t, f = piece.scale_pairs(inv_norms)
        targets += t
        factors += f
    if targets:
        torch._foreach_mul_(targets, factors)


@dataclass
class StepUnit:
    """The sphere matrices updated by one inner optimizer step (a parameter group or a
    ZeRO-3 sub-group): the same slot layout on every rank, this rank's pieces of them."""

    owner_ids: set[int]
    """ids of the flat fp32 tensors the torch optimizer steps for this unit."""
    n_slots: int
    pieces: list[MasterPiece]
    group: dist.ProcessGroup | None
    """process group to all-reduce over (data-parallel), or None when every rank holds whole matrices.
    Tensor-parallel shards never need one: a split never cuts the normalized dim."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """where the master pieces (and so the sum buffer) live: the CPU under ZeRO-Offload."""
    comm_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """where the all-reduce runs: the engine's device (NCCL takes CUDA tensors only)."""
    spans: list[tuple[str, int, int]] = field(default_factory=list)
    """(matrix name, first slot, end slot) of every matrix in the unit, for naming a broken one."""

    def norm_sums(self) -> torch.Tensor:
        """The squared norm of every norm vector of the unit, complete on every rank (on `device`)."""
        sums = torch.zeros(self.n_slots, dtype=torch.float32, device=self.device)
        for piece in self.pieces:
            piece.add_squares(sums)
        if self.group is not None:
            all_reduce_on(sums, self.comm_device, group=self.group)
        return sums
