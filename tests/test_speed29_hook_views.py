"""The hook's renormalization with views cut once per piece and one `torch._foreach_mul_` over all pieces
(`MasterPiece._split`'s cache, `scale_all`; docs/benchmarks.md, "What was changed, and what it gave"): the
same masters, bit for bit, as cutting the views anew and scaling piece by piece, for pieces that start and end
mid-row along both norm dims; and a piece whose `values` tensor is replaced cuts its views from the new one."""

import torch

from ngpt_ds.train.sphere_pieces import TINY_SQUARED_NORM, MasterPiece, scale_all


def _pieces(flat: torch.Tensor, shapes: list[tuple[int, int, int]], cut: int) -> list[MasterPiece]:
    """One rank's pieces: every matrix cut at `cut` elements from its start (a partial row each side)."""
    pieces, offset, slot = [], 0, 0
    for rows, cols, norm_dim in shapes:
        n = rows * cols
        values = flat[offset + cut : offset + n - cut]
        pieces.append(MasterPiece(values, cut, rows, cols, norm_dim, slot))
        offset += n
        slot += rows if norm_dim == 1 else cols
    return pieces


SHAPES = [(6, 10, 1), (10, 6, 0), (12, 10, 1), (10, 24, 0), (5, 10, 1)]


def _renormalized(flat: torch.Tensor, cut: int, batched: bool) -> torch.Tensor:
    flat = flat.clone()
    pieces = _pieces(flat, SHAPES, cut)
    n_slots = sum(r if d == 1 else c for r, c, d in SHAPES)
    for _ in range(2):  # twice: the second pass runs on the cached views
        sums = torch.zeros(n_slots)
        for piece in pieces:
            if not batched:
                piece._parts = None
            piece.add_squares(sums)
        inv = sums.clamp_min(TINY_SQUARED_NORM).rsqrt_()
        if batched:
            scale_all(pieces, inv)
        else:
            for piece in pieces:
                piece._parts = None
                piece.scale(inv)
        flat.mul_(1.001)  # off the sphere again for the second pass
    return flat


def test_scale_all_and_cached_views_give_the_masters_bit_for_bit():
    generator = torch.Generator().manual_seed(29)
    total = sum(r * c for r, c, _ in SHAPES)
    flat = torch.randn(total, generator=generator) * 2
    for cut in (0, 3, 7):
        expected = _renormalized(flat, cut, batched=False)
        got = _renormalized(flat, cut, batched=True)
        assert torch.equal(got, expected), cut
        assert not torch.equal(got, flat * 1.001**2)  # the pieces were scaled


def test_the_views_are_cut_once_and_again_from_a_replaced_values_tensor():
    flat = torch.arange(1.0, 61.0)
    piece = MasterPiece(flat[3:57], 3, 6, 10, 1, 0)
    first = piece._split()
    assert piece._split()[1] is first[1]  # cached: the same view object
    assert first[1].data_ptr() == flat[10:].data_ptr()
    other = torch.arange(101.0, 161.0)
    piece.values = other[3:57]  # a rebuilt master in new storage
    again = piece._split()
    assert again[1].data_ptr() == other[10:].data_ptr()
    assert torch.equal(again[1], other[10:50].view(4, 10))
    assert torch.equal(again[0], other[3:10]) and torch.equal(again[2], other[50:57])
