"""The standard GPT baseline nGPT is compared with (as in the official code after its baseline bug fix):
pre-norm RMSNorm blocks with a clean residual path, SwiGLU, RoPE, a final RMSNorm."""

from __future__ import annotations

import math

import torch
from torch import nn

from ngpt_ds.model.blocks import CausalSelfAttention, SwiGLU
from ngpt_ds.model.config import ModelConfig
from ngpt_ds.model.layers import Projection, TokenEmbedding
from ngpt_ds.model.lm import CausalLM


class PreNormBlock(nn.Module):
    """h <- h + ATTN(RMSNorm(h)); h <- h + MLP(RMSNorm(h))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        std = config.init_std
        out_std = std / math.sqrt(2 * config.n_layer)
        self.attn_norm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config, on_sphere=False, qkv_std=std, out_std=out_std)
        self.mlp_norm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.mlp = SwiGLU(config, on_sphere=False, up_std=std, down_std=out_std)

    def attention_update(
        self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return h + self.attn(self.attn_norm(h), cos, sin, mask)

    def mlp_update(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.mlp(self.mlp_norm(h))

    def forward(
        self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.mlp_update(self.attention_update(h, cos, sin, mask))


class GPT(CausalLM):
    """GPT baseline: untied embeddings, init N(0, 0.02), output projections / sqrt(2 n_layer)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        d, V = config.n_embd, config.vocab_size
        assert V is not None  # CausalLM.__init__ rejects an unresolved vocab_size
        self.embed = TokenEmbedding(V, d, on_sphere=False, init_std=config.init_std)
        self.blocks = nn.ModuleList(PreNormBlock(config) for _ in range(config.n_layer))
        self.final_norm = nn.RMSNorm(d, eps=config.norm_eps)
        self.head = Projection(d, V, style="column", on_sphere=False, init_std=config.init_std)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.final_norm(h))

    def normed_logits(self, normed: torch.Tensor) -> torch.Tensor:
        """`logits` of hidden states already through final_norm: transformers' last hidden state, which ngpt_ds.hf
        computes for output_hidden_states and then gives the head as it is, rather than norming h a second time.
        (`logits` itself stays whole: the pipeline's head layer runs it on the children it holds.)"""
        return self.head(normed)
