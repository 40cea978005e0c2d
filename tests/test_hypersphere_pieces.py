"""MasterPiece on its own: a sphere matrix cut into pieces at every offset, as many ranks' ZeRO partitions
would cut it, including norm vectors that straddle three or more pieces (a small d_model over many ranks,
which the 2-rank tests cannot reach). Each piece adds its squares into a buffer of its own (one rank's),
the buffers are summed (the all-reduce) and each piece scales itself by them: the result must be the whole
matrix renormalized along its dim, and a zero vector must stay zero."""

import itertools

import pytest
import torch

from ngpt_ds.train.sphere_pieces import TINY_SQUARED_NORM, MasterPiece

SLOT = 2  # the matrix's norm vectors do not start at slot 0 of the unit's buffer
EXTRA = 3  # and other matrices' slots follow them


def renormalize_in_pieces(weight: torch.Tensor, norm_dim: int, cuts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the summed squared norms of the whole buffer, the matrix after every piece scaled itself)."""
    rows, cols = weight.shape
    flat = weight.flatten().clone()
    bounds = [0, *cuts, flat.numel()]
    pieces = [MasterPiece(flat[a:b], a, rows, cols, norm_dim, SLOT) for a, b in zip(bounds, bounds[1:])]
    n_slots = SLOT + weight.shape[1 - norm_dim] + EXTRA
    sums = torch.zeros(n_slots)
    for piece in pieces:  # each on its own rank
        mine = torch.zeros(n_slots)
        piece.add_squares(mine)
        sums += mine
    inv = sums.clamp_min(TINY_SQUARED_NORM).rsqrt()
    for piece in pieces:
        piece.scale(inv)
    return sums, flat.view(rows, cols)


def cut_points(numel: int, size: int) -> list[list[int]]:
    """Every cut into pieces of `size` elements (the last shorter), from each starting offset."""
    return [list(range(first, numel, size)) for first in range(1, size + 1) if first < numel]


@pytest.mark.parametrize("norm_dim", [0, 1])
@pytest.mark.parametrize("rows, cols", [(3, 7), (5, 4), (1, 9), (6, 1), (4, 4)])
def test_pieces_smaller_than_a_norm_vector_renormalize_the_whole_matrix(rows, cols, norm_dim):
    generator = torch.Generator().manual_seed(rows * 10 + cols)
    weight = torch.randn(rows, cols, generator=generator) * 3
    if rows > 1:  # a zero row: along dim 1 a zero vector; along dim 0 one zero entry in each column
        weight[rows // 2].zero_()
    expected_sums = weight.square().sum(dim=norm_dim)
    most_pieces_in_a_row = 0
    zero = expected_sums == 0
    for size in range(1, rows * cols + 1):
        for cuts in cut_points(rows * cols, size):
            sums, result = renormalize_in_pieces(weight, norm_dim, cuts)
            n = expected_sums.numel()
            assert torch.allclose(sums[SLOT : SLOT + n], expected_sums, rtol=1e-6, atol=0), (size, cuts)
            assert torch.count_nonzero(sums[:SLOT]) == 0 and torch.count_nonzero(sums[SLOT + n :]) == 0
            norms = result.norm(dim=norm_dim)
            assert (norms[~zero] - 1).abs().max().item() < 3e-7, (size, cuts)
            assert torch.count_nonzero(norms[zero]) == 0  # a zero vector stays zero, not NaN
            assert bool(result.isfinite().all())
            for row in range(rows):  # how many pieces (ranks) hold a part of this row
                inside = [c for c in cuts if row * cols < c < (row + 1) * cols]
                most_pieces_in_a_row = max(most_pieces_in_a_row, len(inside) + 1)
    assert most_pieces_in_a_row == cols  # down to one element per piece: a row over `cols` ranks


def test_a_row_cut_into_three_pieces_sums_its_squares_once():
    """One row of 6 over three 'ranks' of 2 elements each: 1 + 4 + 9 + 16 + 25 + 36 = 91."""
    weight = torch.arange(1.0, 7.0).view(1, 6)
    sums, result = renormalize_in_pieces(weight, 1, [2, 4])
    assert sums[SLOT].item() == 91.0
    assert torch.allclose(result, weight / 91.0**0.5, rtol=1e-6, atol=0)
    assert list(itertools.chain(sums[:SLOT].tolist(), sums[SLOT + 1 :].tolist())) == [0.0] * (SLOT + EXTRA)
