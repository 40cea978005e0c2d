"""nGPT, the normalized Transformer (Loshchilov et al., arXiv 2410.01131); docs/ngpt_notes.md
records where ngpt_ds's forms differ from the paper's and the official code's.

Every vector that forms a matrix-embedding dimension lives on the unit hypersphere:
token embeddings, the rows/columns of every projection along d_model, and the hidden
state h after every update. A block moves h towards the normalized outputs of its
attention and MLP by learned per-channel "eigen learning rates" alpha (eqs. 10-11).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ngpt_ds.model.blocks import CausalSelfAttention, SwiGLU
from ngpt_ds.model.config import ModelConfig
from ngpt_ds.model.layers import (
    Projection,
    ScaleVector,
    TokenEmbedding,
    _scale_rows,
    l2_normalize,
    norm_kernel,
    tangent_rows,
)
from ngpt_ds.model.lm import CausalLM
from ngpt_ds.model.sphere import normalize_matrices_


def sphere_step(h: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Norm(h + alpha (target - h)) (eqs. 10-11) as Norm(lerp(h, target, alpha)).

    The step runs in the wider of the two dtypes, as `h + alpha * (target - h)` would by type
    promotion: under autocast the block output `target` comes out of bf16 matmuls while the
    residual stream h keeps the embedding's dtype (fp32), and torch.lerp, on no autocast list,
    refuses mixed dtypes. The stream therefore stays fp32 under autocast, as in the official code.
    """
    dtype = torch.promote_types(h.dtype, target.dtype)
    return l2_normalize(torch.lerp(h.to(dtype), target.to(dtype), alpha.to(dtype)))


class _BlockUpdate(torch.autograd.Function):
    """`sphere_step(h, Norm(x), alpha)`, the whole eq. 10 or 11 update, as one autograd function.

    The forward runs the same operations as the plain form; the backward runs the operations autograd runs
    through the two normalizations and lerp (`_L2Normalize.backward`; lerp's dself = g (1 - alpha), dend =
    g alpha, dweight = sum over tokens of g (end - self)), the same values bit for bit, with their
    temporaries reused in place and one autograd node instead of three: forward plus backward of one update at
    ngpt_tiny's shape, with the trainer's allocator setting, 0.68x of the plain form's time in fp32 and 0.98x
    in bf16 (docs/benchmarks.md, "What was changed, and what it gave", `bench/block_update.py`). With
    NGPT_DS_NORM_KERNEL=1 the forward is one C++ loop over the rows where h, x and alpha share a dtype
    (`norm_kernel.step`), the same values (docs/benchmarks.md, "Norm's forward in C++")."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        ctx.dtypes = (h.dtype, alpha.dtype)
        kernel = norm_kernel()  # NGPT_DS_NORM_KERNEL=1: the whole forward in one C++ loop, the same values
        looped = None if kernel is None else kernel.step(h, x, alpha)
        if looped is not None:
            target, y, inv_x, inv_m, factor_x, factor_m = looped
            ctx.save_for_backward(h, target, alpha, y, inv_m, inv_x, factor_m, factor_x)
            return y
        inv_x = torch.linalg.vector_norm(
            x, dim=-1, keepdim=True, dtype=torch.promote_types(x.dtype, torch.float32)
        ).reciprocal_()
        factor_x = inv_x.to(x.dtype)
        target = _scale_rows(x, factor_x)
        dtype = torch.promote_types(h.dtype, x.dtype)
        h_d, alpha_d = h.to(dtype), alpha.to(dtype)
        m = torch.lerp(h_d, target.to(dtype), alpha_d)
        inv_m = torch.linalg.vector_norm(
            m, dim=-1, keepdim=True, dtype=torch.promote_types(dtype, torch.float32)
        ).reciprocal_()
        factor_m = inv_m.to(dtype)
        y = _scale_rows(m, factor_m)
        # the factors in the forward's dtypes too: the backward multiplies by the same ones, not by new casts
        ctx.save_for_backward(h_d, target, alpha_d, y, inv_m, inv_x, factor_m, factor_x)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h_d, target, alpha_d, y, inv_m, inv_x, factor_m, factor_x = ctx.saved_tensors
        h_dtype, alpha_dtype = ctx.dtypes
        dm = tangent_rows(grad, y, inv_m, factor=factor_m)  # through the outer Norm
        kernel = norm_kernel()  # NGPT_DS_NORM_KERNEL=1: the next three in one loop, the same values
        parts = None if kernel is None else kernel.update_parts(dm, target, h_d, alpha_d)
        if parts is None:
            dh = dm * (1 - alpha_d)
            dalpha = (target.to(dm.dtype) - h_d).mul_(dm).sum(tuple(range(dm.dim() - 1)))
            dtarget = dm.mul_(alpha_d).to(target.dtype)
        else:
            dh, terms, dtarget = parts
            dalpha = terms.sum(tuple(range(dm.dim() - 1)))
        dx = tangent_rows(dtarget, target, inv_x, factor=factor_x)  # through the inner Norm
        return dh.to(h_dtype), dx, dalpha.to(alpha_dtype)


def block_update(h: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """h <- Norm(h + alpha (Norm(x) - h)) (eqs. 10-11), x the block output: `sphere_step(h, l2_normalize(x),
    alpha)`, the same values and gradients bit for bit.

    On the CPU in eager mode with gradients, through `_BlockUpdate` (0.68x of the plain form in fp32, 0.98x in
    bf16, docs/benchmarks.md). Under torch.compile, Inductor fuses the plain form itself; on other devices it
    was not measured. Like SwiGLU's gate (`layers._GatedSiLU`), it is once differentiable: a double backward
    (`create_graph=True`) through an eager model on the CPU is refused by torch."""
    if (
        x.device.type == "cpu"
        and torch.is_grad_enabled()
        and (h.requires_grad or x.requires_grad or alpha.requires_grad)
        and not torch.compiler.is_compiling()
    ):
        return _BlockUpdate.apply(h, x, alpha)
    return sphere_step(h, l2_normalize(x), alpha)


class NormalizedBlock(nn.Module):
    """One nGPT layer: h <- Norm(h + |alpha_A| (Norm(ATTN(h)) - h)), then the same with the MLP."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.n_embd
        # Matrix init is irrelevant (they are normalized right away, PAPER A.5); this is OFF's.
        std = 1.0 / math.sqrt(d)
        out_std = std / math.sqrt(2 * config.n_layer)
        self.attn = CausalSelfAttention(config, on_sphere=True, qkv_std=std, out_std=out_std)
        self.mlp = SwiGLU(config, on_sphere=True, up_std=std, down_std=out_std)
        self.attn_alpha = ScaleVector(
            d, init=config.alpha_attn_init, scale=config.resolved_scale(config.alpha_attn_scale), absolute=True
        )
        self.mlp_alpha = ScaleVector(
            d, init=config.alpha_mlp_init, scale=config.resolved_scale(config.alpha_mlp_scale), absolute=True
        )

    def attention_update(
        self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Eq. 10: h <- Norm(h + alpha_A (h_A - h)), h_A = Norm(ATTN(h)). h: [B, T, d], unit rows.
        `mask`: a padded batch's attention mask (CausalSelfAttention.forward)."""
        return block_update(h, self.attn(h, cos, sin, mask), self.attn_alpha())

    def mlp_update(self, h: torch.Tensor) -> torch.Tensor:
        """Eq. 11: h <- Norm(h + alpha_M (h_M - h)), h_M = Norm(MLP(h))."""
        return block_update(h, self.mlp(h), self.mlp_alpha())

    def forward(
        self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.mlp_update(self.attention_update(h, cos, sin, mask))


class NGPT(CausalLM):
    """nGPT language model. No final norm; logits z = s_z * (h E_out^T) (eq. 24), so |z_v| <= |s_z,v|.

    Input and output embeddings are untied. All declared matrices are normalized at
    construction; the trainer renormalizes them after every optimizer step.
    """

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        d, V = config.n_embd, config.vocab_size
        assert V is not None  # CausalLM.__init__ rejects an unresolved vocab_size
        std = 1.0 / math.sqrt(d)
        self.embed = TokenEmbedding(V, d, on_sphere=True, init_std=std)
        self.blocks = nn.ModuleList(NormalizedBlock(config) for _ in range(config.n_layer))
        self.head = Projection(d, V, style="column", on_sphere=True, init_std=std)
        self.s_z = ScaleVector(V, init=config.s_z_init, scale=config.resolved_scale(config.s_z_scale))
        normalize_matrices_(self)

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """h = Norm(E_in[x]). E_in's rows are unit norm, so the value is E_in[x] (to rounding), but
        the gradient reaching E_in is projected onto the sphere's tangent: no radial part, which Adam
        would otherwise see (the official block gets the same projection on its update path by
        normalizing its input again; docs/ngpt_notes.md, "Gradients")."""
        return l2_normalize(self.embed(token_ids))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h, row_scale=self.s_z())
