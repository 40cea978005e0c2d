"""What the transformers models' forward accepts: labels, token ids, the KV cache, attention_mask and position_ids
of padded batches. Each check raises a ValueError naming the argument, its shape or value, and the fix, before
anything runs: otherwise the mistake surfaced deep in the model, or not at all (ngpt_ds.hf.modeling_ngpt).

This file is copied into every `--format hf` export with modeling_ngpt.py.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer


def check_labels(input_ids: torch.Tensor, labels: torch.Tensor, logits_to_keep: int) -> None:
    """labels as transformers' causal LMs take them: one per input position (the input ids, shifted here; -100
    where no loss), with every position's logits. Other shapes stopped in the loss with "The expanded size of the
    tensor (6) must match the existing size (4)" or "too many indices for tensor of dimension 1", and
    logits_to_keep with "The size of tensor a (0) must match the size of tensor b (6)"."""
    if labels.shape != input_ids.shape:
        raise ValueError(
            f"labels has shape {tuple(labels.shape)} and input_ids {tuple(input_ids.shape)}: labels must have the "
            "shape of input_ids, one per input position (the input ids, shifted inside the model; -100 where no loss)"
        )
    if logits_to_keep:
        raise ValueError(
            f"labels with logits_to_keep={logits_to_keep}: the loss needs the logits of every position; "
            "pass logits_to_keep=0 (the default) with labels"
        )


def check_token_ids(input_ids: torch.Tensor, labels: torch.Tensor | None, vocab: int) -> None:
    """Every input id, and every label but -100, must be a row of the embedding (0 .. vocab - 1). An id past it
    (a tokenizer given tokens by add_tokens, the model not resized) ended in 'IndexError: index out of range in
    self' on a CPU, and in a device-side assert on a GPU, which leaves the CUDA context unusable; -100 in
    input_ids (labels passed as inputs) the same."""
    for name, ids in (("input_ids", input_ids), ("labels", labels)):
        if ids is None or ids.numel() == 0:
            continue
        outside = (ids < 0) | (ids >= vocab)
        if name == "labels":
            outside &= ids != -100
        if torch.compiler.is_compiling():  # `bool(...)` reads the tensor on the host: a graph break
            _assert_in_graph(
                ~outside.any(), f"{name} hold a value that is no token id of this model (0 to {vocab - 1})"
            )
            continue
        if bool(outside.any()):
            value = int(ids[outside].flatten()[0])
            added = (
                "; after tokenizer.add_tokens (or add_special_tokens), call model.resize_token_embeddings(len(tokenizer))"
                if value >= vocab
                else (
                    " (-100 marks a label to ignore; it is no input)" if value == -100 and name == "input_ids" else ""
                )
            )
            raise ValueError(
                f"{name} hold {value}, which is no token id of this model: it has {vocab} (0 to {vocab - 1}, "
                f"config.vocab_size){'' if name == 'input_ids' else ' and takes -100 for a label to ignore'}{added}"
            )


def _assert_in_graph(condition: torch.Tensor, message: str) -> None:
    """Under torch.compile: fail with `message` where `condition` (a bool tensor) is false, without reading it
    on the host (which breaks the graph in two at each check). A RuntimeError on a CPU; on a GPU a device-side
    assert, as the embedding's own index check would be, but naming the argument. Eager mode raises the checks'
    ValueErrors, with the offending value."""
    torch._assert_async(condition, message)


def check_cache(cache: Any) -> None:
    """The cache must keep every position's keys and values as given (a DynamicCache of DynamicLayers):
    ngpt_ds's attention appends each step's keys and values and attends to all the layer returns. A static
    cache returns its whole preallocated buffer (empty slots included: wrong logits on every decode step,
    without an error) and a sliding-window or quantized one drops or alters keys, so they are refused
    before anything runs. (generate with cache_implementation="static" ended in a misleading message about
    the 4D attention_mask it builds for static caches.)"""
    if isinstance(cache, Cache):
        kinds = {type(layer) for layer in cache.layers}
        if cache.layer_class_to_replicate is not None:
            kinds.add(cache.layer_class_to_replicate)
        if kinds <= {DynamicLayer}:
            return
        layers = ", ".join(sorted(k.__name__ for k in kinds - {DynamicLayer}))
        what = f"{type(cache).__name__} (with {layers} layers)"
    else:
        what = type(cache).__name__
    raise ValueError(
        f"a {what} cannot be the KV cache of this model: only DynamicCache (the default) is supported, whose "
        "layers keep every position's keys and values. Pass no cache (generate creates a DynamicCache) or a "
        "DynamicCache(), and no cache_implementation"
    )


def padding(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None, past: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Checks attention_mask and position_ids against input_ids [B, T] after `past` cached positions, and
    returns them as ngpt_ds's key_mask [B, past + T] (bool) and positions [B, T], each None when it says
    nothing new (a mask of all ones; positions past, past + 1, ...): then the model runs its usual path."""
    B, T = input_ids.shape
    key_mask = None
    if attention_mask is not None:
        if attention_mask.shape != (B, past + T):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; it must be 2D, [batch, cached + new "
                f"positions] = {[B, past + T]} (1 for tokens, 0 for padding) for input_ids {[B, T]} after {past} cached"
            )
        binary = ((attention_mask == 0) | (attention_mask == 1)).all()
        if torch.compiler.is_compiling():
            _assert_in_graph(binary, "attention_mask must hold only 0 (padding) and 1 (token)")
        elif not bool(binary):
            raise ValueError(
                "attention_mask must hold only 0 (padding) and 1 (token); an additive mask (0 and -inf) is not taken"
            )
        key_mask = attention_mask.bool()
    if position_ids is not None:
        if position_ids.ndim != 2 or position_ids.shape[0] not in (1, B) or position_ids.shape[1] != T:
            raise ValueError(
                f"position_ids has shape {tuple(position_ids.shape)}; it must be [batch, new positions] = "
                f"{[B, T]} (or [1, {T}]) for input_ids {[B, T]}"
            )
        if position_ids.is_floating_point() or position_ids.dtype == torch.bool:
            raise ValueError("position_ids must be integers >= 0")
        if torch.compiler.is_compiling():
            _assert_in_graph((position_ids >= 0).all(), "position_ids must be integers >= 0")
        elif bool((position_ids < 0).any()):
            raise ValueError("position_ids must be integers >= 0")
        positions = position_ids.long().expand(B, T)
    elif key_mask is not None:
        # As transformers' generate computes them (GenerationMixin._prepare_position_ids_for_generation): each
        # sequence's first token at 0 whatever padding precedes it; padding positions are never attended to.
        positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
    else:
        return None, None
    # Eager mode: a mask of all ones and the default positions say nothing new, so the training path runs. Under
    # torch.compile those two reads of the values on the host broke the graph; the padded path gives the same
    # outputs for them (its mask then the causal one, its positions the default ones), so it runs whatever the
    # values; its own checks run in the graph too (ngpt_ds.model.lm; RoPE's rows are one opaque operator).
    if torch.compiler.is_compiling():
        return key_mask, positions
    if key_mask is not None and bool(key_mask.all()):
        key_mask = None
    default = torch.arange(past, past + T, device=positions.device)
    return key_mask, None if bool((positions == default).all()) else positions
