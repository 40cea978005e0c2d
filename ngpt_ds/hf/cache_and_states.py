"""What the transformers wrappers (modeling_ngpt) put around ngpt_ds's blocks for one forward: a transformers Cache
seen through ngpt_ds's KV-cache interface, and the per-block hidden states of `output_hidden_states=True`.

This file is also copied into every `--format hf` export (with its ngpt_ds imports made relative).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from transformers.cache_utils import Cache

from ngpt_ds.model.blocks import KVCache


class _LayerView:
    """One layer of a transformers Cache, with the interface of ngpt_ds.model.blocks.LayerKVCache."""

    def __init__(self, cache: Cache, layer_idx: int):
        self.cache, self.layer_idx = cache, layer_idx

    @property
    def length(self) -> int:
        return self.cache.get_seq_length(self.layer_idx)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.update(k, v, self.layer_idx)


class CacheBinding(KVCache):
    """ngpt_ds's KVCache whose layers store their keys and values in a transformers Cache."""

    def __init__(self, cache: Cache, n_layer: int):
        super().__init__()
        self.layers = [_LayerView(cache, i) for i in range(n_layer)]


def asked(kwargs: dict[str, Any], config: Any, name: str) -> bool:
    """Whether forward was asked for `name` (output_hidden_states, output_attentions): by its keyword, else by
    the config, as transformers' models read them."""
    value = kwargs.get(name)
    return bool(getattr(config, name, False) if value is None else value)


class StatesRecorder:
    """transformers' `hidden_states` for output_hidden_states=True, recorded by hooks on the blocks for one forward
    (none otherwise): the input of the first block (the embedding; nGPT's normalized, eq. 1-2 of the paper), then
    each block's output, the last one after the GPT baseline's final RMSNorm, as transformers' Llama gives it
    (nGPT has no final norm: its last hidden state is on the sphere). n_layer + 1 tensors [B, T, d]."""

    def __init__(self, model: nn.Module) -> None:
        self.states: list[torch.Tensor] = []
        self.model = model
        blocks = cast(nn.ModuleList, model.blocks)
        self.handles = [blocks[0].register_forward_pre_hook(lambda _m, args: self.states.append(args[0]))]
        self.handles += [b.register_forward_hook(lambda _m, _a, out: self.states.append(out)) for b in blocks]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def hidden_states(self) -> tuple[torch.Tensor, ...]:
        states = list(self.states)
        final_norm = getattr(self.model, "final_norm", None)
        if final_norm is not None:
            states[-1] = final_norm(states[-1])
        return tuple(states)
