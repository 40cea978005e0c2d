"""resize_token_embeddings of the transformers nGPT and GPT baseline (ngpt_ds.hf.modeling_ngpt): the vocabulary
of ngpt_ds's layers grown or shrunk, with nGPT's new rows on the hypersphere (paper section 2.1).

Exported with the modeling code (ngpt_ds.hf.export copies the files modeling_ngpt.py imports).
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import torch
from torch import nn

from ngpt_ds.model.layers import DeclaredMatrix, Projection
from ngpt_ds.model.lm import CausalLM


def resize_vocabulary(
    model: CausalLM, config: Any, new_num_tokens: int | None, pad_to_multiple_of: int | None, mean_resizing: bool
) -> nn.Module:
    """transformers' resize_token_embeddings (new tokens added to a tokenizer) for ngpt_ds's CausalLM `model`, whose
    transformers config is `config`: the input embedding, the output head and, in nGPT, the logit scale s_z (eq. 24)
    get `new_num_tokens` rows (rounded up to `pad_to_multiple_of`); the kept rows are unchanged, so the old tokens'
    logits are too. New rows are the mean of the old ones (s_z: the mean effective value), as transformers'
    mean_resizing gives them, or with mean_resizing=False the model's own initialization; in nGPT every new row is
    then unit norm (section 2.1: the embeddings live on the hypersphere). config.vocab_size follows. (transformers'
    own refused the model: its embedding is no nn.Embedding.) Returns the embedding."""
    embed = cast(DeclaredMatrix, model.embed)
    if new_num_tokens is None and pad_to_multiple_of is None:
        return embed
    old = embed.weight.shape[0]
    size = old if new_num_tokens is None else new_num_tokens
    for name, value in (("new_num_tokens", size), ("pad_to_multiple_of", pad_to_multiple_of)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ValueError(f"resize_token_embeddings: {name} must be a positive integer, not {value!r}")
    if pad_to_multiple_of is not None:
        size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
    if size != old:
        keep = min(size, old)
        _resize(embed, size, keep, mean_resizing, config)
        _resize(cast(DeclaredMatrix, model.head), size, keep, mean_resizing, config)
        s_z = getattr(model, "s_z", None)
        if s_z is not None:
            param = s_z.param
            fill = param[:keep].mean() if mean_resizing else torch.tensor(s_z.scale)
            new = torch.cat([param.data[:keep], fill.to(param).expand(size - keep)])
            s_z.param = nn.Parameter(new, requires_grad=param.requires_grad)
        config.vocab_size = size
        model.config = dataclasses.replace(model.config, vocab_size=size)
    return model.embed


def _resize(module: DeclaredMatrix, size: int, keep: int, mean_resizing: bool, config: Any) -> None:
    """Gives the embedding or head `module` a weight of `size` rows: its first `keep`, then new ones (see
    resize_token_embeddings), on the sphere when the module is (nGPT)."""
    weight = module.weight
    with torch.no_grad():
        rows = weight.new_empty(size - keep, weight.shape[1], dtype=torch.float32)
        if mean_resizing:
            rows.copy_(weight[:keep].float().mean(0).expand_as(rows))
        else:  # as ngpt_ds.model builds the matrix: nGPT N(0, 1/d) (then normalized), the GPT N(0, init_std)
            rows.normal_(0.0, weight.shape[1] ** -0.5 if module.on_sphere else config.init_std)
        if module.on_sphere:
            rows = rows / rows.norm(dim=1, keepdim=True).clamp(min=torch.finfo(rows.dtype).tiny)
        resized = torch.cat([weight[:keep], rows.to(weight.dtype)])
    module.weight = nn.Parameter(resized, requires_grad=weight.requires_grad)
    if isinstance(module, Projection):  # the head [vocab, d]
        module.out_features = size
