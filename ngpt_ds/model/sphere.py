"""The hypersphere constraint on weights: which matrices, along which dim, and renormalization.

This is the single place that turns a model's declared matrices into (param, norm_dim)
pairs. The ZeRO-aware hook in ngpt_ds.train works from the same list.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ngpt_ds.model.layers import DeclaredMatrix


@dataclass(frozen=True)
class SphereMatrix:
    """A weight that nGPT keeps at unit norm along `norm_dim`, the side of length d_model (paper §2.6;
    the table of matrices and dims is in docs/ngpt_notes.md)."""

    name: str
    param: nn.Parameter
    norm_dim: int


def sphere_matrices(model: nn.Module) -> list[SphereMatrix]:
    """Every declared matrix with on_sphere=True, in module order (empty for the GPT baseline)."""
    return [
        SphereMatrix(f"{name}.weight" if name else "weight", module.weight, module.layout.norm_dim)
        for name, module in model.named_modules()
        if isinstance(module, DeclaredMatrix) and module.on_sphere
    ]


def _norm_dtype(param: torch.Tensor) -> torch.dtype:
    """fp32 for 16-bit weights and fp32, float64 for float64 weights: rounding a float64 matrix through fp32
    left its rows off the sphere by ~1e-8, where float64 keeps them to ~1e-16."""
    return torch.promote_types(param.dtype, torch.float32)


@torch.no_grad()
def normalize_matrices_(model: nn.Module) -> None:
    """Renormalize every sphere matrix in place: W <- W / ||W||_norm_dim, computed in fp32 (float64 for
    float64 weights).

    Right for an unsharded model (single process, DDP-style replicas, tensor-parallel
    shards since a split never cuts norm_dim). Under ZeRO use the hook in
    ngpt_ds.train.hypersphere, which works on the fp32 master shards.
    """
    for matrix in sphere_matrices(model):
        w = matrix.param.to(_norm_dtype(matrix.param))
        norms = torch.linalg.vector_norm(w, dim=matrix.norm_dim, keepdim=True)
        # A zero vector (a zero-padded vocabulary row) stays zero instead of becoming 0/0 = NaN.
        matrix.param.copy_(w / norms.clamp_min(torch.finfo(w.dtype).tiny))


@torch.no_grad()
def norm_deviation(weight: torch.Tensor, norm_dim: int) -> float:
    """max | ||w||_norm_dim - 1 | of one matrix (NaN if any of its values is)."""
    return (torch.linalg.vector_norm(weight.to(_norm_dtype(weight)), dim=norm_dim) - 1).abs().max().item()


@torch.no_grad()
def max_norm_deviation(model: nn.Module) -> float:
    """max | ||W||_norm_dim - 1 | over all sphere matrices (0.0 when there are none; NaN if any weight is)."""
    worst = 0.0
    for matrix in sphere_matrices(model):
        deviation = norm_deviation(matrix.param, matrix.norm_dim)
        if deviation != deviation:  # NaN: a max() would silently skip it
            return float("nan")
        worst = max(worst, deviation)
    return worst
