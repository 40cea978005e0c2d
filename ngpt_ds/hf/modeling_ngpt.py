"""transformers models for nGPT and the GPT baseline: a PreTrainedModel around ngpt_ds's own
CausalLM (`self.model`, built by ngpt_ds.model.build_model), so there is one copy of the model.

The KV cache is transformers' own `Cache` (a DynamicCache by default, created by `generate` or
here); ngpt_ds's attention reaches it through the same per-layer interface (`length`, `append`)
as ngpt_ds.model.blocks.KVCache, so incremental decoding runs the same code either way.

Inputs with padding (an attention_mask holding zeros) are refused: the model has no padding mask
or per-sequence positions. Batches of equal-length sequences, and right-padded ones when only the
logits of real positions are used (as lm-eval's loglikelihood does, which passes no mask), are fine.

This file is also copied into every `--format hf` export (with its ngpt_ds imports made relative).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from ngpt_ds.hf.configuration_ngpt import GPTBaselineConfig, NGPTConfig
from ngpt_ds.model.blocks import KVCache
from ngpt_ds.model.factory import build_model


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


class _NgptDsPreTrainedModel(PreTrainedModel):
    base_model_prefix = "model"
    main_input_name = "input_ids"

    def __init__(self, config: NGPTConfig | GPTBaselineConfig) -> None:
        super().__init__(config)
        self.model = build_model(config.to_model_config())
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing: ngpt_ds.model initializes (and, for nGPT, normalizes) its own weights."""

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """input_ids [B, T] -> logits [B, T, V] (the last `logits_to_keep` positions when > 0).

        With a `cache` (transformers' name; `past_key_values` is its older one, also taken), input_ids are the
        positions after the cached ones. `labels` are the input ids (shifted here, -100 ignored), as
        everywhere in transformers. Position ids are the cache's length onwards (no padding).
        """
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError(f"{type(self).__name__} takes input_ids, not inputs_embeds")
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError(
                f"{type(self).__name__} has no padding mask: pass sequences of equal length "
                "(batch size 1, or no padding) so that attention_mask is all ones"
            )
        cache = kwargs.get("past_key_values") if cache is None else cache
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        # use_cache implies a cache here (a DynamicCache when none was passed).
        binding = CacheBinding(cache, self.config.n_layer) if use_cache and cache is not None else None
        h = self.model.hidden_states(input_ids, binding)
        # The last position alone, as ngpt_ds.infer.generate computes it (the same numbers, token for token).
        logits = self.model.logits(h[:, -logits_to_keep:] if logits_to_keep else h)
        loss = None
        if labels is not None:
            targets = labels[:, 1:].masked_fill(labels[:, 1:] == -100, -1)
            loss = self.model.cross_entropy(logits[:, :-1], targets)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache if use_cache else None)


class NGPTForCausalLM(_NgptDsPreTrainedModel, GenerationMixin):
    """nGPT (arXiv 2410.01131) as a transformers causal LM; `self.model` is ngpt_ds.model.NGPT."""

    config_class = NGPTConfig


class GPTBaselineForCausalLM(_NgptDsPreTrainedModel, GenerationMixin):
    """ngpt_ds's GPT baseline as a transformers causal LM; `self.model` is ngpt_ds.model.GPT."""

    config_class = GPTBaselineConfig


MODELS = {"ngpt": NGPTForCausalLM, "gpt": GPTBaselineForCausalLM}
