"""Attention and SwiGLU MLP, shared by nGPT and the GPT baseline.

The nGPT-only parts (normalized q/k with s_qk, the s_u/s_v scaling, the softmax
scale sqrt(d_head)) are switched on by `on_sphere`; everything else is one code path.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ngpt_ds.model.config import ModelConfig
from ngpt_ds.model.layers import Projection, RotaryEmbedding, ScaleVector, gated_silu, l2_normalize

#: Under torch.compile on the CPU, attention over at most this many positions runs as `written_attention`
#: (plain operations, which Inductor fuses) instead of SDPA's flash kernel; above it the flash kernel, whose
#: memory and time grow more slowly with the context. Set by `python bench/attn_path.py --compile --forms
#: current,written --seq-lens 128,256,512,1024 --tokens 2048 --head-dims 48,64 --rounds 6 --reps 6 --threads 1
#: --clock cpu` (2026-12-04, load average 8-12; docs/benchmarks.md, "What was changed, and what it gave"),
#: written / flash time, forward plus backward, head_dim 48 and 64: 0.38 and 0.45 at 128 positions, 0.87 and
#: 0.73 at 256, 1.01 and 0.97 at 512 (even), 1.71 and 1.50 at 1024.
WRITTEN_ATTENTION_MAX_POSITIONS = 256


def written_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal softmax(q k^T * scale) v written out: q, k, v [B, T, H, head_dim] -> [B, T, H, head_dim].

    The scores are q k^T in q's dtype, then the scale, the causal mask and the softmax in fp32 (at least),
    and the probabilities in q's dtype times v. The same function as SDPA's: in fp32 the two agree to
    rounding (1e-7 here), in bf16 they differ by the scores' bf16 rounding, which the flash kernel does not
    do (tests/test_speed28_written_attention.py holds both)."""
    positions = torch.arange(q.shape[1], device=q.device)
    future = positions[None, :] > positions[:, None]  # [T, T]: True where a key is after the query
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    accumulate = torch.promote_types(q.dtype, torch.float32)
    scores = torch.matmul(qt, kt.transpose(-1, -2)).to(accumulate) * scale
    probs = scores.masked_fill(future, float("-inf")).softmax(-1).to(q.dtype)
    return torch.matmul(probs, vt).transpose(1, 2)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE, through torch SDPA.

    nGPT (PAPER §2.3.2, eqs. 15-16): q <- s_qk * Norm(RoPE(q)), k <- s_qk * Norm(RoPE(k)),
    per head over head_dim, the same s_qk on both; softmax scale sqrt(head_dim), so at
    init every logit is sqrt(head_dim) * cos(q, k).
    GPT: plain RoPE(q), RoPE(k); softmax scale 1/sqrt(head_dim).

    `qkv` is one column-style projection whose rows are [W_q; W_k; W_v]. A tensor-parallel
    shard keeps the same order for its heads, so the split below works on a shard too.
    """

    def __init__(self, config: ModelConfig, *, on_sphere: bool, qkv_std: float, out_std: float):
        super().__init__()
        d = config.n_embd
        self.head_dim = config.head_dim
        self.on_sphere = on_sphere
        self.qkv = Projection(d, 3 * d, style="column", on_sphere=on_sphere, init_std=qkv_std)
        self.out = Projection(d, d, style="row", on_sphere=on_sphere, init_std=out_std)
        if on_sphere:
            self.s_qk = ScaleVector(d, init=config.s_qk_init, scale=config.resolved_scale(config.s_qk_scale))
            self.softmax_scale = math.sqrt(self.head_dim)
        else:
            self.softmax_scale = 1.0 / math.sqrt(self.head_dim)
        self.kv_cache: LayerCache | None = None  # set only while a KVCache is bound (incremental decoding)

    def project_qkv(
        self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h: [B, T, d] -> q, k, v each [B, T, H, head_dim]; q and k rotated.

        nGPT: k = Norm(k) and q = s_qk^2 * Norm(q), per head (see below)."""
        B, T, _ = h.shape
        # split and unbind rather than indexing: their backward writes each gradient once (a cat or a
        # stack), where an index's backward zero-fills a tensor of the full size for each part.
        qk, v = self.qkv(h).view(B, T, 3, -1, self.head_dim).split((2, 1), dim=2)
        # q and k go through RoPE (and nGPT's Norm) as one [B, T, 2, H, head_dim] tensor: the same
        # elementwise values as two calls, in half the operator calls (docs/benchmarks.md, "MFU").
        qk = RotaryEmbedding.rotate(qk, cos.unsqueeze(-2), sin.unsqueeze(-2))
        v = v.squeeze(2)
        if not self.on_sphere:
            q, k = qk.unbind(2)
            return q, k, v
        q, k = l2_normalize(qk).unbind(2)
        # (s_qk * Norm(q)) . (s_qk * Norm(k)) = (s_qk^2 * Norm(q)) . Norm(k): one multiply
        # instead of two, the same logits and gradients (and it is what GQA needs).
        s_qk = self.s_qk().view(-1, self.head_dim)  # [H, head_dim]
        return q * s_qk.square().to(q.dtype), k, v

    def forward(
        self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """h: [B, T, d] -> attention output h_A before any normalization, [B, T, d].

        With a KV cache bound (`KVCache.bind`), h holds the T positions after the cached ones;
        cos/sin must be the tables of those positions. `mask` (from `attention_mask`, for padded
        batches): [B, 1, T, cached + T] booleans, True where a query may attend; it replaces the causal mask.
        """
        B, T, _ = h.shape
        q, k, v = self.project_qkv(h, cos, sin)
        if self.kv_cache is None and mask is None:
            return self.out(self.attend(q, k, v).reshape(B, T, -1))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        causal = mask is None
        past = 0 if self.kv_cache is None else self.kv_cache.length
        if self.kv_cache is not None:
            k, v = self.kv_cache.append(k, v)
        if past and mask is None:
            # is_causal with fewer queries than keys aligns the mask top-left (wrong here):
            # query i sits at position past + i and sees keys 0..past + i.
            causal = False
            if T > 1:
                mask = torch.ones(T, past + T, dtype=torch.bool, device=h.device).tril(diagonal=past)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.softmax_scale)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The attention core: causal softmax(q k^T * softmax_scale) v over all T positions given.
        q, k, v: [B, T, H, head_dim] -> [B, T, H, head_dim].

        Sequence parallelism (ngpt_ds.parallel.sequence) replaces it per instance by an all-to-all
        around this same function: each rank then holds T / S positions of all heads, the function
        sees all positions of H / S heads.

        Compiled on the CPU, up to WRITTEN_ATTENTION_MAX_POSITIONS positions, as `written_attention`: in a
        compiled step the fused plain operations ran faster than the flash kernel there (its values differ
        by bf16 rounding only; eager runs are untouched)."""
        if torch.compiler.is_compiling() and q.device.type == "cpu" and q.shape[1] <= WRITTEN_ATTENTION_MAX_POSITIONS:
            return written_attention(q, k, v, self.softmax_scale)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=self.softmax_scale
        )
        return y.transpose(1, 2)


def attention_mask(key_mask: torch.Tensor, queries: int) -> torch.Tensor:
    """The boolean SDPA mask of a padded batch: key_mask [B, S] (True = a real token; the S = cached + queries
    positions, the queries last) -> [B, 1, queries, S], True where query i (at column S - queries + i) may
    attend to key j: j is a real token no later than it (causal and padding combined, as transformers' Llama).

    Each query may also attend to itself: a padding position left of a sequence's first token has no real
    key at or before it, and SDPA gives such an all-False row NaN in some kernels, zeros in others (torch's
    CPU kernel), which nGPT's Norm(ATTN(h)) turns into NaN (0 / 0). No real token attends to that position,
    yet a NaN there would reach them all: the next layer's SDPA multiplies its value by a weight of 0."""
    columns = key_mask.shape[1]
    keys = torch.arange(columns, device=key_mask.device)
    query_columns = keys[columns - queries :, None]  # [queries, 1]
    causal = keys <= query_columns  # [queries, S]
    return ((causal & key_mask[:, None, :].bool()) | (keys == query_columns)).unsqueeze(1)


class SwiGLU(nn.Module):
    """MLP(h) = W_2 (u * SiLU(v)), [u; v] = W_uv h (PAPER eqs. 17-21).

    nGPT scales u <- s_u * u and v <- s_v * sqrt(d_model) * v (eqs. 20-21). The official
    code also puts sqrt(d_model) on u; the block output is normalized and linear in u,
    so both give the same function and gradients (docs/ngpt_notes.md, "Gradients").
    `up_gate` rows are [W_u; W_v]; a tensor-parallel shard keeps [u-shard; v-shard].
    """

    def __init__(self, config: ModelConfig, *, on_sphere: bool, up_std: float, down_std: float):
        super().__init__()
        d, hidden = config.n_embd, config.mlp_width
        self.on_sphere = on_sphere
        self.up_gate = Projection(d, 2 * hidden, style="column", on_sphere=on_sphere, init_std=up_std)
        self.down = Projection(hidden, d, style="row", on_sphere=on_sphere, init_std=down_std)
        if on_sphere:
            self.s_u = ScaleVector(hidden, init=config.s_u_init, scale=config.s_uv_scale)
            self.s_v = ScaleVector(hidden, init=config.s_v_init, scale=config.s_uv_scale)
            self.v_multiplier = math.sqrt(d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: [B, T, d] -> [B, T, d] (h_M before normalization)."""
        if self.on_sphere:
            uv = self.up_gate(h, row_scale=torch.cat([self.s_u(), self.s_v() * self.v_multiplier]))
        else:
            uv = self.up_gate(h)
        return self.down(gated_silu(uv))


class LayerCache(Protocol):
    """What attention reads and appends of one layer's cache: a LayerKVCache, or a view into another
    library's cache (ngpt_ds.hf keeps them in a transformers Cache)."""

    @property
    def length(self) -> int: ...

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class LayerKVCache:
    """Keys and values of one attention layer for the positions decoded so far, [B, H, T, head_dim].

    Storage grows by doubling, so appending one position costs O(1) amortized copies.
    """

    def __init__(self) -> None:
        self.length = 0
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add k, v [B, H, T_new, head_dim]; returns the keys and values of all positions so far."""
        end = self.length + k.shape[2]
        if self._k is None or end > self._k.shape[2]:
            capacity = max(end, 2 * (0 if self._k is None else self._k.shape[2]))
            grown_k = k.new_empty(*k.shape[:2], capacity, k.shape[3])
            grown_v = v.new_empty(*v.shape[:2], capacity, v.shape[3])
            if self._k is not None:
                assert self._v is not None  # set together with _k
                grown_k[:, :, : self.length] = self._k[:, :, : self.length]
                grown_v[:, :, : self.length] = self._v[:, :, : self.length]
            self._k, self._v = grown_k, grown_v
        assert self._v is not None  # set together with _k
        self._k[:, :, self.length : end] = k
        self._v[:, :, self.length : end] = v
        self.length = end
        return self._k[:, :, :end], self._v[:, :, :end]


class KVCache:
    """A KV cache for incremental decoding with any CausalLM (nGPT and GPT share the attention).

    Pass one cache to successive `model(token_ids, cache=cache)` calls: each call feeds only the
    new positions, appends their keys and values, and continues RoPE and the causal mask at
    `length`. One cache serves one batch of sequences that advance together; after an error
    mid-forward, start a new cache.
    """

    def __init__(self) -> None:
        self.layers: list[LayerCache] = []

    @property
    def length(self) -> int:
        """Positions cached so far: the position of the next token fed."""
        return self.layers[0].length if self.layers else 0

    @contextmanager
    def bind(self, model: nn.Module) -> Iterator[KVCache]:
        """Attach one LayerKVCache to each attention module of `model` (in module order) for a forward."""
        attentions = [m for m in model.modules() if isinstance(m, CausalSelfAttention)]
        if not self.layers:
            self.layers = [LayerKVCache() for _ in attentions]
        if len(self.layers) != len(attentions):
            raise ValueError(
                f"this KVCache was filled by a model with {len(self.layers)} attention layers, not {len(attentions)}"
            )
        for attention, layer in zip(attentions, self.layers):
            attention.kv_cache = layer
        try:
            yield self
        finally:
            for attention in attentions:
                attention.kv_cache = None
