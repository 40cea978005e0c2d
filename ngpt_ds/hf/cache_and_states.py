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
    """transformers' `hidden_states` for output_hidden_states=True: the input of the first block (the embedding;
    nGPT's normalized, eq. 1-2 of the paper), then each block's output, the last one after the GPT baseline's final
    RMSNorm, as transformers' Llama gives it (nGPT has no final norm: its last hidden state is on the sphere).
    n_layer + 1 tensors [B, T, d].

    The hooks that record them are registered once, with the model (modeling_ngpt's __init__), and record only
    between `start` and `stop`, so a forward adds none: registered inside forward, they made torch.compile break the
    graph (RemovableHandle, setattr on a type), and `torch.compile(model, fullgraph=True)` refused
    output_hidden_states=True. The blocks' loop stays ngpt_ds.model.lm's own (CausalLM.hidden_states), one copy."""

    def __init__(self, model: nn.Module) -> None:
        self.states: list[torch.Tensor] | None = None
        self._hook(cast(nn.ModuleList, model.blocks))

    def _hook(self, blocks: nn.ModuleList) -> None:
        """Put the recording hooks on the blocks that lack them. Bound methods, not closures: copy.deepcopy and
        pickle of the model carry them, bound to the copy's recorder. Every block records its input when it runs
        first, so a model whose blocks were pruned after it was built (without block 0) still records the embedding."""
        for block in blocks:
            if not any(getattr(hook, "__self__", None) is self for hook in block._forward_hooks.values()):
                block.register_forward_pre_hook(self._first_input)
                block.register_forward_hook(self._block_output)

    def _first_input(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.states is not None and not self.states:
            self.states.append(args[0])

    def _block_output(self, _module: nn.Module, _args: tuple[Any, ...], output: torch.Tensor) -> None:
        if self.states is not None:
            self.states.append(output)

    def start(self, blocks: nn.ModuleList) -> None:
        """Record the blocks' states from now on (one forward's: `stop` ends it). Eager, blocks put into the model
        after it was built get their hooks here, as the hooks registered for each forward did before; compiled,
        where registering breaks the graph, they record nothing (modeling_ngpt refuses the count)."""
        if not torch.compiler.is_compiling():
            self._hook(blocks)
        self.states = []

    def stop(self) -> list[torch.Tensor]:
        """The states recorded since `start` (raw: the last one before any final norm), and no more recording."""
        states, self.states = self.states or [], None
        return states
