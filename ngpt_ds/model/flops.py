"""Parameter counts and the training-FLOPs-per-token formula used for MFU."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ngpt_ds.model.config import ModelConfig
from ngpt_ds.model.layers import DeclaredMatrix, TokenEmbedding


@dataclass(frozen=True)
class ParameterCount:
    total: int
    matrices: int
    """All weight matrices, embeddings included."""
    input_embedding: int
    """The token lookup table (costs no matmul FLOPs)."""
    vectors: int
    """Scaling vectors (nGPT) and norm weights (GPT)."""


def count_parameters(model: nn.Module) -> ParameterCount:
    """Counts a model's parameters by kind (each tensor once)."""
    total = sum(p.numel() for p in model.parameters())
    matrices = sum(m.weight.numel() for m in model.modules() if isinstance(m, DeclaredMatrix))
    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, TokenEmbedding))
    return ParameterCount(total=total, matrices=matrices, input_embedding=embedding, vectors=total - matrices)


def training_flops_per_token(config: ModelConfig) -> int:
    """Model FLOPs to train on one token (forward + backward), the PaLM appendix-B convention.

    6 * N_matmul + 12 * n_layer * n_embd * seq_len, where
      N_matmul = n_layer * (4 d^2 [q, k, v, o] + 3 d * mlp_width [u, v, down]) + V * d [head]
    counts each multiply-add as 2 FLOPs, forward once and backward twice. The second
    term is attention's QK^T and AV over the full (non-causal) T x T matrix. The input
    embedding lookup, norms, RoPE and nGPT's normalizations and scalings are elementwise
    and left out, as MFU conventions do, so nGPT and GPT of equal shape get equal FLOPs.
    """
    d, L = config.n_embd, config.n_layer
    assert config.vocab_size is not None, "vocab_size must be resolved (from the dataset) first"
    per_layer = 4 * d * d + 3 * d * config.mlp_width
    n_matmul = L * per_layer + config.vocab_size * d
    return 6 * n_matmul + 12 * L * d * config.seq_len
