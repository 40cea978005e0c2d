"""What nGPT and the GPT baseline have in common: embeddings, a stack of blocks, a head, the loss."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ngpt_ds.model.blocks import KVCache, attention_mask
from ngpt_ds.model.config import ModelConfig
from ngpt_ds.model.layers import Projection, RotaryEmbedding, TokenEmbedding
from ngpt_ds.model.loss import cross_entropy


class CausalLM(nn.Module):
    """A decoder-only language model: token_ids [B, T] -> logits [B, T, V].

    Subclasses build `embed`, `blocks`, `head` and define `logits(h)`; each block has
    `forward(h, cos, sin, mask=None) -> h`.
    """

    config: ModelConfig
    embed: TokenEmbedding
    blocks: nn.ModuleList
    head: Projection
    checkpoint_every: int = 0
    """Activation checkpointing: while training, blocks 0, k, 2k, ... keep only their input and are run
    again in backward (k = 1: every block; 0: off). Same gradients, bit for bit (README, "Activation
    checkpointing"); the trainer sets it from train.activation_checkpointing."""
    sequence_chunk: int = 0
    """Sequence parallelism: the T tokens a forward gets are chunk c of sequences cut into equal
    chunks, so they sit at positions c*T ... c*T + T - 1 and RoPE rotates them there (0: the
    sequence starts at the first token). Set by ngpt_ds.parallel.sequence."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size must be resolved (from the dataset) before building a model")
        self.config = config
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_base)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final hidden states [B, T, d] -> logits [B, T, V]."""
        raise NotImplementedError

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token_ids [B, T] -> the first hidden states [B, T, d]: the embedding lookup."""
        return self.embed(token_ids)

    def hidden_states(
        self,
        token_ids: torch.Tensor,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """token_ids [B, T] -> final hidden states [B, T, d].

        With a KVCache, token_ids are the T positions after the `cache.length` cached ones.
        For padded batches (inference): `positions` [B, T], each token's RoPE position (default: its
        column, after the cached ones); `key_mask` [B, cache.length + T], True (or 1) for real tokens, 0 for
        padding, which no query attends to. Without either, the training path runs (SDPA's is_causal).
        """
        h = self.embed_tokens(token_ids)
        B, T = token_ids.shape
        past = 0 if cache is None else cache.length
        mask = None
        if positions is None and key_mask is None:
            offset = self.sequence_chunk * T if cache is None else past
            cos, sin = self.rotary.tables(T, h.device, h.dtype, offset)
        else:
            if positions is None:
                positions = torch.arange(past, past + T, device=h.device).expand(B, T)
            integer = not positions.is_floating_point() and positions.dtype != torch.bool
            message = f"positions must be integers >= 0 of shape {(B, T)}, one per token"
            if positions.shape != (B, T) or not integer:
                raise ValueError(message)
            negative = (positions < 0).any()
            if torch.compiler.is_compiling():  # read on the host, `negative` broke torch.compile's graph
                torch._assert_async(~negative, message)
            elif bool(negative):
                raise ValueError(message)
            cos, sin = self.rotary.tables_at(positions.long(), h.dtype)
            if key_mask is not None:
                if key_mask.shape != (B, past + T):
                    raise ValueError(
                        f"key_mask must have shape {(B, past + T)} (the {past} cached positions and the {T} "
                        f"new ones), not {tuple(key_mask.shape)}"
                    )
                mask = attention_mask(key_mask, T)
        with nullcontext() if cache is None else cache.bind(self):
            for index, block in enumerate(self.blocks):
                # The mask goes to a block only when there is one: the blocks' training signature is unchanged.
                args = (h, cos, sin) if mask is None else (h, cos, sin, mask)
                if self._recompute(index, cache):
                    # Non-reentrant: parameter gradients arrive even though no input requires grad,
                    # and the RNG state is replayed, so the recomputation is exact.
                    h = checkpoint(block, *args, use_reentrant=False)
                else:
                    h = block(*args)
        return h

    def _recompute(self, index: int, cache: KVCache | None) -> bool:
        """Whether block `index` is checkpointed in this forward: only when a backward can follow."""
        every = self.checkpoint_every
        return every > 0 and index % every == 0 and cache is None and torch.is_grad_enabled()

    def forward(
        self, token_ids: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (logits [B, T, V], mean cross-entropy or None). Targets of -1 are ignored.

        With targets, the logits come back detached: gradients flow through the loss alone. Under
        torch.compile every differentiable output of the graph gets a gradient in its backward, so logits
        with grad made it fill a zero [B, T, V] gradient for them and add it in, every step
        (docs/benchmarks.md, "What was changed, and what it gave"; `bench/logits_tangent.py`).
        Without targets they keep their graph.

        `cache`: a KVCache for incremental decoding (see `hidden_states`).
        """
        logits = self.logits(self.hidden_states(token_ids, cache))
        if targets is None:
            return logits, None
        return logits.detach(), self.cross_entropy(logits, targets)

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean token cross-entropy in fp32 (or wider: float64 logits stay float64), ignoring targets
        of -1. Tensor parallelism replaces it with a vocabulary-parallel version (logits hold one
        vocabulary slice per rank). F.cross_entropy's function with a cheaper backward (ngpt_ds/model/loss.py)."""
        return cross_entropy(logits.flatten(0, 1), targets.flatten())
