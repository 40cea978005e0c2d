"""x Norm(W + L R)^T without forming W + L R: the forward of ngpt_ds's LoRA layer on the sphere (ngpt_ds/hf/lora.py).

W is [out, in], L = [s_1 B_1, s_2 B_2, ...] is [out, r] and R = [A_1; A_2; ...] is [r, in] (the active adapters'
scaled B and A stacked, so that L R is the sum of their deltas). Forming W + L R costs a full matrix per adapted
layer, and autograd kept three ([out, in] each: W + L R, its normalization and the row-scaled copy) for the backward:
on a big model more than the frozen weights themselves. Here only vectors of length out or in and matrices with one
side r are made:

- unit rows (norm_dim 1: q/k/v, up/gate, the head): ||w_i + l_i R||^2 = ||w_i||^2 + 2 (W R^T)_i . l_i + l_i (R R^T) l_i^T,
  and y = (x W^T + (x R^T) L^T) * (row_scale / n) per output unit;
- unit columns (norm_dim 0: attention out, MLP down): the same on W^T, and the 1 / n goes to the input side:
  y = ((x / n) W^T + ((x / n) R^T) L^T) * row_scale.

_LowRankLinear is that product with a backward of its own: it keeps x and x R^T (what PEFT's plain LoRA keeps), and
recomputes the pre-scale output where the scale's gradient needs it, instead of keeping a [tokens, out] copy.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def sphere_lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    left: torch.Tensor,
    right: torch.Tensor,
    norm_dim: int,
    row_scale: torch.Tensor | None,
) -> torch.Tensor:
    """x Norm_{norm_dim}(weight + left @ right)^T, times row_scale per output unit when given (see the module doc)."""
    dtype = torch.promote_types(weight.dtype, torch.float32)
    n = _norms(weight, left.to(dtype), right.to(dtype), norm_dim).clamp_min(torch.finfo(dtype).tiny)
    scale = None if row_scale is None else row_scale.to(dtype)
    in_scale: torch.Tensor | None = None
    out_scale: torch.Tensor | None = scale
    if norm_dim == 1:  # unit rows: each output unit divides by its own norm
        out_scale = 1 / n if scale is None else scale / n
    else:  # unit columns: each input unit's column divides, i.e. x's entry does
        in_scale = 1 / n
    return _LowRankLinear.apply(x, weight, left, right, in_scale, out_scale)


def _norms(weight: torch.Tensor, left: torch.Tensor, right: torch.Tensor, norm_dim: int) -> torch.Tensor:
    """||weight + left @ right|| along norm_dim, from O((out + in) r) products (in `left`'s dtype, float32 at least)."""
    if norm_dim == 0:  # columns of W + L R are rows of W^T + R^T L^T
        weight, left, right = weight.t(), right.t(), left.t()
    w = weight.to(left.dtype)
    squared = torch.linalg.vector_norm(w, dim=1).square()
    squared = squared + 2 * (F.linear(w, right) * left).sum(1)  # 2 (W R^T)_i . l_i
    squared = squared + (left @ (right @ right.t()) * left).sum(1)  # l_i (R R^T) l_i^T
    return squared.clamp_min(0).sqrt()


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the matrix products run in: autocast's where it is on (as F.linear's), else x's."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class _LowRankLinear(torch.autograd.Function):
    """y = ((x * in_scale) W^T + ((x * in_scale) R^T) L^T) * out_scale; the scales are vectors or None."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        left: torch.Tensor,
        right: torch.Tensor,
        in_scale: torch.Tensor | None,
        out_scale: torch.Tensor | None,
    ) -> torch.Tensor:
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            xs = x.to(dtype) if in_scale is None else x.to(dtype) * in_scale.to(dtype)
            u = F.linear(xs, right.to(dtype))  # [..., r]
            z = F.linear(xs, weight.to(dtype)) + F.linear(u, left.to(dtype))
            y = z if out_scale is None else z * out_scale.to(dtype)
        ctx.dtype = dtype
        ctx.save_for_backward(x, u, weight, left, right, in_scale, out_scale)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        with torch.autocast(grad.device.type, enabled=False):
            return _backward(grad, ctx.dtype, ctx.needs_input_grad, *ctx.saved_tensors)


def _backward(  # noqa: PLR0913, PLR0917  (the Function's saved tensors, as saved)
    grad: torch.Tensor,
    dtype: torch.dtype,
    needs: tuple[bool, ...],
    x: torch.Tensor,
    u: torch.Tensor,
    weight: torch.Tensor,
    left: torch.Tensor,
    right: torch.Tensor,
    in_scale: torch.Tensor | None,
    out_scale: torch.Tensor | None,
) -> tuple[torch.Tensor | None, ...]:
    """_LowRankLinear's gradients of (x, weight, left, right, in_scale, out_scale), those `needs` asks for."""
    need_x, need_w, need_l, need_r, need_in, need_out = needs
    g = grad.to(dtype)
    w, l_, r_ = weight.to(dtype), left.to(dtype), right.to(dtype)
    xs = x.to(dtype) if in_scale is None else x.to(dtype) * in_scale.to(dtype)
    d_out = None
    if out_scale is not None and need_out:  # sum over tokens of g * z, z recomputed (not kept from the forward)
        z = F.linear(xs, w) + F.linear(u, l_)
        d_out = _token_sum(_wide(g) * _wide(z)).to(out_scale.dtype)
    gs = g if out_scale is None else g * out_scale.to(dtype)
    gs_u = F.linear(gs, l_.t())  # [..., r]: the gradient of u = xs R^T
    d_x = d_in = None
    if need_x or need_in:
        d_xs = F.linear(gs, w.t()) + F.linear(gs_u, r_.t())
        if need_x:
            d_x = (d_xs if in_scale is None else d_xs * in_scale.to(dtype)).to(x.dtype)
        if in_scale is not None and need_in:
            d_in = _token_sum(_wide(d_xs) * _wide(x)).to(in_scale.dtype)
    tokens_g, tokens_xs = gs.reshape(-1, gs.shape[-1]), xs.reshape(-1, xs.shape[-1])
    d_w = (tokens_g.t() @ tokens_xs).to(weight.dtype) if need_w else None
    d_l = (tokens_g.t() @ u.reshape(-1, u.shape[-1])).to(left.dtype) if need_l else None
    d_r = (gs_u.reshape(-1, gs_u.shape[-1]).t() @ tokens_xs).to(right.dtype) if need_r else None
    return d_x, d_w, d_l, d_r, d_in, d_out


def _wide(t: torch.Tensor) -> torch.Tensor:
    """t in float32 at least (float64 stays): the scales' gradients sum over every token."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _token_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dim but the last (the tokens of a [..., features] tensor)."""
    return t.reshape(-1, t.shape[-1]).sum(0)
