"""Building blocks shared by nGPT and the GPT baseline.

Tensor layouts follow PyTorch: a projection weight is [out_features, in_features]
(as nn.Linear) and an embedding table is [vocab, d_model]. Activations are
[batch B, time T, ...].

Every weight matrix is a module that *declares* its layout (`MatrixLayout`): the
dimension the nGPT hypersphere constraint normalizes, and the dimension a
tensor-parallel split cuts. The two are always different, so renormalizing a
tensor-parallel shard never needs another rank's data. Nothing else in the code
base hard-codes those dims: renormalization (`ngpt_ds.model.sphere`), the
ZeRO-aware hook and tensor parallelism all read them from here.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: bf16 elements in one AVX512 vector: CPU elementwise kernels run a row whose length is not a multiple of
#: it partly outside their vector loop.
_CPU_VECTOR = 32


def _scale_rows(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * scale, scale of x's shape with the last dim 1 (one factor per row), the same values bit for bit.

    On the CPU in eager mode, with rows shorter than, or not a multiple of, the vector width (q and k
    per head, head_dim 48 at ngpt_tiny), the broadcast multiply ran slower than one of two full-size
    tensors; the factor is then expanded to x's shape first (docs/benchmarks.md, "MFU",
    `bench/row_scale.py`). Under torch.compile, Inductor fuses the broadcast itself."""
    return x * _row_factor(x, scale)


def _scale_rows_(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`_scale_rows` in place, into x: the same products, the same rule for expanding the factor."""
    return x.mul_(_row_factor(x, scale))


def _row_factor(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`scale` as `_scale_rows` multiplies x by it: expanded to x's shape where the broadcast ran slower."""
    if (
        x.device.type == "cpu"
        and x.shape[-1] % _CPU_VECTOR
        and scale.shape[-1] == 1
        and not torch.compiler.is_compiling()
    ):
        return scale.expand_as(x).contiguous()
    return scale


def tangent_rows(
    grad: torch.Tensor, y: torch.Tensor, inv_norm: torch.Tensor, dim: int = -1, factor: torch.Tensor | None = None
) -> torch.Tensor:
    """(grad - y (grad . y)) / ||x|| along `dim`, for y = Norm(x) and inv_norm = 1 / ||x||: the gradient through
    Norm, the operations and dtypes of autograd's form (`grad * y`, its sum in inv_norm's dtype, then the two
    products and the difference in grad's dtype, so the same values bit for bit), in one buffer reused in
    place. Not differentiable itself (out= and in-place): for backward passes without create_graph.

    `factor`: inv_norm already cast to the forward's dtype, as the forward multiplied x by it (of shape
    [..., 1], or expanded to x's shape by `_row_factor`); used when that is grad's dtype (always, through
    autograd), instead of casting inv_norm again: the same values.

    With NGPT_DS_NORM_KERNEL=1, through `ngpt_ds.model.norm_kernel`'s C++ loops where they apply (the same
    values in three passes instead of five; docs/benchmarks.md, "Norm's backward in C++")."""
    looped = _looped_tangent_rows(grad, y, inv_norm, dim, factor)
    if looped is not None:
        return looped
    dot = (grad * y).sum(dim=dim, keepdim=True, dtype=inv_norm.dtype)
    out = _scale_rows(y, dot.to(grad.dtype))
    torch.sub(grad, out, out=out)
    if factor is None or factor.dtype != grad.dtype:
        factor = inv_norm.to(grad.dtype)
    return _scale_rows_(out, factor)


def _looped_tangent_rows(
    grad: torch.Tensor, y: torch.Tensor, inv_norm: torch.Tensor, dim: int, factor: torch.Tensor | None
) -> torch.Tensor | None:
    """`norm_kernel.tangent_rows` where NGPT_DS_NORM_KERNEL=1 asks for it, else None."""
    kernel = norm_kernel()
    return None if kernel is None else kernel.tangent_rows(grad, y, inv_norm, dim, factor)


def norm_kernel() -> Any | None:
    """The module `ngpt_ds.model.norm_kernel` where NGPT_DS_NORM_KERNEL lets its loops run (1, or unset: then
    where this machine already holds their build), else None.
    Imported by name: an HF export copies this file and the modules it imports with `from`, and leaves that one,
    C++ built on first use, out; there, without ngpt_ds installed, torch's operators run."""
    if os.environ.get("NGPT_DS_NORM_KERNEL", "") not in ("", "1"):
        return None
    try:
        return importlib.import_module("ngpt_ds.model.norm_kernel")
    except ImportError:
        return None


class _GatedSiLU(torch.autograd.Function):
    """u * SiLU(v) for [u; v] = y, whose backward writes du = g * SiLU(v) and dv = silu_backward(g * u, v)
    straight into the two halves of one gradient tensor: autograd's form ends in chunk's backward, a cat
    of du and dv ([B, T, 2 * hidden] per layer). The same operations, so the same values bit for bit."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor) -> torch.Tensor:
        u, v = y.chunk(2, dim=-1)
        gate = F.silu(v)
        ctx.save_for_backward(u, v, gate)
        return u * gate

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        u, v, gate = ctx.saved_tensors
        hidden = u.shape[-1]
        dy = grad.new_empty(*grad.shape[:-1], 2 * hidden)
        torch.mul(grad, gate, out=dy[..., :hidden])
        torch.ops.aten.silu_backward.grad_input(grad * u, v, grad_input=dy[..., hidden:])
        return dy


def gated_silu(y: torch.Tensor) -> torch.Tensor:
    """SwiGLU's gate u * SiLU(v), [u; v] = y.chunk(2, dim=-1), the same values and gradients bit for bit.

    On the CPU in eager mode with gradients, through `_GatedSiLU` (no cat in the backward; measured 0.89-0.95
    of autograd's form for the gate alone, docs/benchmarks.md, "What was changed, and what it gave",
    `bench/swiglu_path.py`). Under torch.compile, Inductor fuses autograd's form itself."""
    if y.device.type == "cpu" and y.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return _GatedSiLU.apply(y)
    u, v = y.chunk(2, dim=-1)
    return u * F.silu(v)


class _L2Normalize(torch.autograd.Function):
    """y = x / ||x|| with a hand-written backward, dx = (g - y (g . y)) / ||x||: two passes over
    the tensor instead of autograd's chain through the norm and the division. Without create_graph the
    backward reuses its temporaries in place (`tangent_rows`, the same values bit for bit), and, in eager mode,
    the forward's factor 1 / ||x|| in x's dtype as the forward multiplied by it: not cast again, and, where
    `_scale_rows` copies it to x's whole shape (q and k's rows of 48 at ngpt_tiny), not copied again (one
    activation of x's size more kept for the backward; q and k's Norm 0.89-0.95x, docs/benchmarks.md, "What was
    changed, and what it gave", `bench/excess_forms.py`). Under torch.compile the traced graph stays as it was.
    With NGPT_DS_NORM_KERNEL=1, in eager mode, the forward is one C++ loop where it applies
    (`norm_kernel.normalize`, the same values; docs/benchmarks.md, "Norm's forward in C++")."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dim: int) -> torch.Tensor:
        ctx.dim = dim
        # NGPT_DS_NORM_KERNEL=1, eager: one C++ loop, the same values, the factor kept per row (never copied)
        kernel = None if torch.compiler.is_compiling() else norm_kernel()
        looped = None if kernel is None else kernel.normalize(x, dim)
        if looped is not None:
            y, inv_norm, factor = looped
            ctx.save_for_backward(y, inv_norm, factor)
            return y
        accumulate = torch.promote_types(x.dtype, torch.float32)
        inv_norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=accumulate).reciprocal_()
        factor = _row_factor(x, inv_norm.to(x.dtype))
        y = x * factor
        if torch.compiler.is_compiling():
            ctx.save_for_backward(y, inv_norm)
        else:
            ctx.save_for_backward(y, inv_norm, factor)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        y, inv_norm, *factor = ctx.saved_tensors
        if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # eager, no create_graph: the same values with temporaries reused in place (q and k at ngpt_tiny:
            # 0.81x of this form below in fp32, 0.95x in bf16, docs/benchmarks.md); torch.compile traces the plain form.
            return tangent_rows(grad, y, inv_norm, ctx.dim, *factor), None
        dot = (grad * y).sum(dim=ctx.dim, keepdim=True, dtype=inv_norm.dtype)
        return _scale_rows(grad - _scale_rows(y, dot.to(grad.dtype)), inv_norm.to(grad.dtype)), None


def l2_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Norm(x) = x / ||x||_2 along `dim` (the paper's Norm). The norm is accumulated in fp32.

    No epsilon, as in the official code: every vector normalized here (hidden states,
    projections of unit vectors, weight rows) is non-zero in practice.
    """
    return _L2Normalize.apply(x, dim)


@dataclass(frozen=True)
class MatrixLayout:
    """How a weight matrix lives on the hypersphere and across tensor-parallel ranks.

    norm_dim:  the dim of length d_model, along which nGPT keeps unit norm (docs/ngpt_notes.md, second table).
    split_dim: the dim a tensor-parallel split cuts; always the other one.
    """

    norm_dim: int
    split_dim: int


#: Column-parallel projection [out, in=d_model] and embedding tables [V, d_model]:
#: each row is a unit vector over d_model; tensor parallelism splits the rows.
ROW_VECTORS = MatrixLayout(norm_dim=1, split_dim=0)
#: Row-parallel projection [out=d_model, in]: each column is a unit vector over
#: d_model; tensor parallelism splits the columns.
COLUMN_VECTORS = MatrixLayout(norm_dim=0, split_dim=1)


class DeclaredMatrix(nn.Module):
    """Base of every module that owns one weight matrix `self.weight`.

    `on_sphere` is True in nGPT: the matrix is renormalized along `layout.norm_dim`
    once before training and after every optimizer step.
    """

    weight: nn.Parameter
    layout: MatrixLayout
    on_sphere: bool


class Projection(DeclaredMatrix):
    """y = x W^T without bias. W: [out_features, in_features].

    style "column": splits along out_features (q, k, v, MLP up/gate, output head),
    unit norm along in_features = d_model.
    style "row": splits along in_features (attention output, MLP down),
    unit norm along out_features = d_model.
    """

    def __init__(self, in_features: int, out_features: int, *, style: str, on_sphere: bool, init_std: float):
        super().__init__()
        if style not in ("column", "row"):
            raise ValueError(f"Projection style must be 'column' or 'row', got {style!r}")
        self.in_features, self.out_features = in_features, out_features
        self.style = style
        self.layout = ROW_VECTORS if style == "column" else COLUMN_VECTORS
        self.on_sphere = on_sphere
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.normal_(self.weight, mean=0.0, std=init_std)

    def forward(self, x: torch.Tensor, row_scale: torch.Tensor | None = None) -> torch.Tensor:
        """x: [..., in_features] -> [..., out_features], times `row_scale` [out_features] if given."""
        return scaled_linear(x, self.weight, row_scale)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, style={self.style}, on_sphere={self.on_sphere}"


def scaled_linear(x: torch.Tensor, weight: torch.Tensor, row_scale: torch.Tensor | None) -> torch.Tensor:
    """(x W^T) * row_scale. When there are more tokens than input features the scale is folded
    into W's rows (out x in multiplies instead of tokens x out, forward and backward alike);
    the two are the same function."""
    if row_scale is None:
        return F.linear(x, weight)
    if x.numel() // x.shape[-1] > weight.shape[1]:
        return F.linear(x, weight * row_scale.to(weight.dtype).unsqueeze(1))
    y = F.linear(x, weight)  # under autocast: bf16 whatever x is, as in the folded form
    return y * row_scale.to(y.dtype)


class TokenEmbedding(DeclaredMatrix):
    """Token lookup table E: [vocab_size, d_model]; rows are unit norm in nGPT.

    Tensor parallelism splits the vocabulary (rows), like the output head.
    """

    def __init__(self, vocab_size: int, d_model: int, *, on_sphere: bool, init_std: float):
        super().__init__()
        self.layout = ROW_VECTORS
        self.on_sphere = on_sphere
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        nn.init.normal_(self.weight, mean=0.0, std=init_std)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token_ids: [B, T] int64 -> [B, T, d_model]."""
        return F.embedding(token_ids, self.weight)


class ScaleVector(nn.Module):
    """A learnable per-channel scaling vector with the paper's init/scale trick (PAPER §2.5).

    The stored tensor starts at `scale` and is multiplied by `init / scale` in the
    forward pass, so the effective value starts at `init` while one Adam step on the
    stored value moves the effective value by about lr * init / scale. nGPT's alpha
    takes the absolute value, as the official code does. Never renormalized, never weight-decayed.
    """

    def __init__(self, size: int, *, init: float, scale: float, absolute: bool = False):
        super().__init__()
        self.init, self.scale, self.absolute = float(init), float(scale), absolute
        self.param = nn.Parameter(torch.full((size,), self.scale))

    def forward(self) -> torch.Tensor:
        """Effective value, shape [size]."""
        value = self.param * (self.init / self.scale)
        return value.abs() if self.absolute else value

    def extra_repr(self) -> str:
        return f"size={self.param.numel()}, init={self.init:g}, scale={self.scale:g}, abs={self.absolute}"


# Named after this module (ngpt_ds_model_layers::rope_tables): the copy of this file in an HF export
# (ngpt_ds.hf.export) registers its own, so two versions of the code in one process never share one.
# ASCII only: transformers keeps a local folder's name, accents included, in the module name, and
# torch could not register an operator named with them.
_ROPE_TABLES_OP = re.sub(r"[^0-9A-Za-z_]", "_", __name__) + "::rope_tables"


@torch.library.custom_op(_ROPE_TABLES_OP, mutates_args=())
def _rope_tables(
    seq_len: int, offset: int, head_dim: int, base: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """`RotaryEmbedding.tables`, as an operator that torch.compile treats as one opaque call.

    Left to itself, Inductor inlines these small pointwise tables into every kernel that reads them:
    cos and sin were then evaluated once per element of q and k in each layer, and again in the
    backward that recomputes them, which cost about a tenth of a compiled `ngpt_tiny` step
    (docs/benchmarks.md, "MFU"). As an operator, they are computed once per forward."""
    half = head_dim // 2
    # Angles in float64, then cos and sin rounded once to `dtype`: formed in float32, position * inv_freq was off
    # by up to 3e-4 rad at position 8191 (the 8k preset; 1.2e-3 at 32k, where nGPT is evaluated past its
    # training length), so q.k depended on the absolute positions, not only on m - n. MPS has no float64.
    where = torch.device("cpu") if device.type == "mps" else device
    inv_freq = base ** (-torch.arange(half, device=where, dtype=torch.float64) / half)
    positions = torch.arange(offset, offset + seq_len, device=where, dtype=torch.float64)
    angles = torch.outer(positions, inv_freq)
    cos, sin = angles.cos(), angles.sin()
    full_cos = torch.cat((cos, cos), dim=-1).unsqueeze(1)
    signed_sin = torch.cat((-sin, sin), dim=-1).unsqueeze(1)
    return full_cos.to(device=device, dtype=dtype), signed_sin.to(device=device, dtype=dtype)


@_rope_tables.register_fake
def _rope_tables_shapes(
    seq_len: int, offset: int, head_dim: int, base: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.empty(seq_len, 1, head_dim, device=device, dtype=dtype),
        torch.empty(seq_len, 1, head_dim, device=device, dtype=dtype),
    )


@torch.library.custom_op(_ROPE_TABLES_OP + "_at", mutates_args=())
def _rope_tables_at(
    positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """`RotaryEmbedding.tables_at` as one opaque operator: the rows of `tables` for positions 0..max. Sizing them
    reads the largest position on the host, which broke torch.compile's graph where it was traced."""
    cos, sin = _rope_tables(int(positions.max()) + 1, 0, head_dim, base, positions.device, dtype)
    return cos[positions], sin[positions]


@_rope_tables_at.register_fake
def _rope_tables_at_shapes(
    positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (*positions.shape, 1, head_dim)
    return positions.new_empty(shape, dtype=dtype), positions.new_empty(shape, dtype=dtype)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al., RoFormer) in the rotate-half layout.

    A correct RoPE, unlike the official nGPT code's (NVIDIA/ngpt issue #10; docs/ngpt_notes.md): rotating q at
    position m and k at position n makes q.k depend only on m - n, and preserves
    norms. Tables are built on every call (they are tiny), from float64 angles, and rounded once to the
    activations' dtype (fp32 under bf16 autocast, whose residual stream stays fp32)."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        self.head_dim, self.base = head_dim, float(base)

    def tables(
        self, seq_len: int, device: torch.device, dtype: torch.dtype, offset: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin for positions offset..offset+seq_len-1, each [seq_len, 1, head_dim]:
        [cos θ, cos θ] and [-sin θ, sin θ] over the two halves of a head, θ_i = position * base^(-2i/head_dim)."""
        return _rope_tables(seq_len, offset, self.head_dim, self.base, device, dtype)

    def tables_at(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin at per-sequence positions (integers >= 0) [B, T], each [B, T, 1, head_dim]: rows
        of `tables` for positions 0..max, so a position gets the same numbers, bit for bit, as in `tables`
        (used for padded batches, whose sequences start at different columns)."""
        return _rope_tables_at(positions, self.head_dim, self.base, dtype)

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [B, T, ..., head_dim]; cos, sin from `tables`: [T, 1, head_dim], or with one more 1 per extra
        dim of x (e.g. [T, 1, 1, head_dim] for q and k stacked as [B, T, 2, H, head_dim]); from `tables_at`
        the same with a leading B ([B, T, 1, 1, head_dim]) -> rotated x.

        Pair (x_i, x_{i+h}), h = head_dim/2, becomes (x_i cos - x_{i+h} sin, x_{i+h} cos + x_i sin). It is
        computed as x * cos + swap_halves(x) * sin: the same products and sums, bit for bit, in operations
        over the whole head_dim instead of per half, which bf16 CPU kernels run faster when head_dim/2 is
        not a multiple of their vector width (docs/benchmarks.md, "MFU")."""
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((x2, x1), dim=-1) * sin
