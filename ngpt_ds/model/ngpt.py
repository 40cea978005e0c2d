"""nGPT, the normalized Transformer (Loshchilov et al., arXiv 2410.01131), as spec §1 defines it.

Every vector that forms a matrix-embedding dimension lives on the unit hypersphere:
token embeddings, the rows/columns of every projection along d_model, and the hidden
state h after every update. A block moves h towards the normalized outputs of its
attention and MLP by learned per-channel "eigen learning rates" alpha (eqs. 10-11).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ngpt_ds.model.blocks import CausalSelfAttention, SwiGLU
from ngpt_ds.model.config import ModelConfig
from ngpt_ds.model.layers import Projection, ScaleVector, TokenEmbedding, l2_normalize
from ngpt_ds.model.lm import CausalLM
from ngpt_ds.model.sphere import normalize_matrices_


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
        self.attn_alpha = ScaleVector(d, init=config.alpha_attn_init,
                                      scale=config.resolved_scale(config.alpha_attn_scale), absolute=True)
        self.mlp_alpha = ScaleVector(d, init=config.alpha_mlp_init,
                                     scale=config.resolved_scale(config.alpha_mlp_scale), absolute=True)

    def attention_update(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Eq. 10: h <- Norm(h + alpha_A (h_A - h)), h_A = Norm(ATTN(h)). h: [B, T, d], unit rows."""
        h_attn = l2_normalize(self.attn(h, cos, sin))
        return l2_normalize(torch.lerp(h, h_attn, self.attn_alpha().to(h.dtype)))

    def mlp_update(self, h: torch.Tensor) -> torch.Tensor:
        """Eq. 11: h <- Norm(h + alpha_M (h_M - h)), h_M = Norm(MLP(h))."""
        h_mlp = l2_normalize(self.mlp(h))
        return l2_normalize(torch.lerp(h, h_mlp, self.mlp_alpha().to(h.dtype)))

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return self.mlp_update(self.attention_update(h, cos, sin))


class NGPT(CausalLM):
    """nGPT language model. No final norm; logits z = s_z * (h E_out^T) (eq. 24), so |z_v| <= |s_z,v|.

    Input and output embeddings are untied. All declared matrices are normalized at
    construction; the trainer renormalizes them after every optimizer step.
    """

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        d, V = config.n_embd, config.vocab_size
        std = 1.0 / math.sqrt(d)
        self.embed = TokenEmbedding(V, d, on_sphere=True, init_std=std)
        self.blocks = nn.ModuleList(NormalizedBlock(config) for _ in range(config.n_layer))
        self.head = Projection(d, V, style="column", on_sphere=True, init_std=std)
        self.s_z = ScaleVector(V, init=config.s_z_init, scale=config.resolved_scale(config.s_z_scale))
        normalize_matrices_(self)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h, row_scale=self.s_z())
