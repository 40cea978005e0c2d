"""transformers models for nGPT and the GPT baseline: a PreTrainedModel around ngpt_ds's own
CausalLM (`self.model`, built by ngpt_ds.model.build_model), so there is one copy of the model.

The KV cache is transformers' own DynamicCache (created by `generate` or here; other kinds, static,
sliding-window or quantized, are refused: check_cache); ngpt_ds's attention reaches it through the same
per-layer interface (`length`, `append`) as ngpt_ds.model.blocks.KVCache, so incremental decoding runs the
same code either way.

Padded batches work as in transformers' Llama: `attention_mask` (1 = token, 0 = padding, on either
side) keeps every query off the padding keys, and `position_ids` (by default the mask's cumulative sum
minus 1, as `generate` computes them) place each sequence's first real token at RoPE position 0, so a
left-padded prompt gets the logits and greedy tokens it gets alone. Without padding, the model runs its
training path unchanged. `generate` never guesses a mask from the pad id: that id is `</s>`, a real
token of the training data; pass the tokenizer's attention_mask with a padded batch.

`from_pretrained` checks the weights as ngpt_ds.infer.loading checks an export's (pretrained_loading);
`save_pretrained` writes the modeling files and `auto_map` with them, as an export has (pretrained_saving).

Fine-tuning keeps nGPT an nGPT: after every step of a torch optimizer (transformers' Trainer's, or one of
your own over model.parameters()) the nGPT matrices it updated are renormalized, as nGPT's training does
(_renormalize_after_step), a copy's too (copy.deepcopy, pickle). DeepSpeed's and FSDP's flat copies are not
reached, so training under them is refused (_check_renormalized_here), except under DeepSpeed with ngpt_ds's
KeepOnTheSphere callback (ngpt_ds.hf.trainer), which renormalizes DeepSpeed's fp32 masters. Loaded in bf16 or
fp16, an nGPT keeps its scaling vectors (alpha, s_qk, s_u, s_v, s_z) in float32, where optimizer steps on them are
not lost; training one whose scaling vectors were converted to 16 bits is refused (_check_scales_train).
`resize_token_embeddings` resizes the embedding, the head and s_z, keeping new rows on the sphere (vocab_resize);
get_output_embeddings gives the head, never tied to the embedding (output_head).
`device_map="auto"` keeps each block on one device (_no_split_modules). forward honours `output_hidden_states`
(compiled too, in one graph: cache_and_states.StatesRecorder) and `return_dict=False`; `output_attentions=True` is
refused (SDPA computes no weights), and so are token ids outside the vocabulary.

This file is also copied into every `--format hf` export (with its ngpt_ds imports made relative).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from transformers import GenerationConfig, GenerationMixin
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ngpt_ds.hf.activation_checkpointing import ActivationCheckpointing, cache_while_training
from ngpt_ds.hf.cache_and_states import CacheBinding, StatesRecorder, asked
from ngpt_ds.hf.causal_loss import causal_lm_loss
from ngpt_ds.hf.configuration_ngpt import GPTBaselineConfig, NGPTConfig
from ngpt_ds.hf.forward_inputs import check_cache, check_labels, check_token_ids, padding
from ngpt_ds.hf.output_head import OutputHead
from ngpt_ds.hf.pretrained_loading import CheckedLoading
from ngpt_ds.hf.pretrained_saving import SavedWithCode
from ngpt_ds.hf.training_guards import (
    _SPHERE_MODELS,  # noqa: F401  # re-exported: ngpt_ds.hf.trainer and tests import it from here
    _check_renormalized_here,
    _check_scales_train,
    _keep_on_the_sphere,
)
from ngpt_ds.hf.vocab_resize import resize_vocabulary
from ngpt_ds.model.factory import build_model
from ngpt_ds.model.gpt import GPT
from ngpt_ds.model.layers import DeclaredMatrix


class _NgptDsPreTrainedModel(ActivationCheckpointing, CheckedLoading, SavedWithCode):
    base_model_prefix = "model"
    main_input_name = "input_ids"
    #: forward takes `num_items_in_batch` (transformers' Trainer passes it with gradient accumulation, and then
    #: does not divide the loss by the accumulation steps itself): the loss is then the sum over this batch's
    #: targets divided by it, as transformers' own causal LMs compute it (loss_utils.fixed_cross_entropy).
    accepts_loss_kwargs = True
    #: Attention runs in torch's scaled_dot_product_attention (ngpt_ds.model.blocks), whatever is asked: so
    #: attn_implementation="sdpa" is taken and config._attn_implementation says "sdpa". Without it transformers
    #: refused "sdpa" as not supported ("... does not support an attention implementation through
    #: torch.nn.functional.scaled_dot_product_attention yet") and reported "eager" for the SDPA that runs.
    _supports_sdpa = True

    def __init__(self, config: NGPTConfig | GPTBaselineConfig) -> None:
        super().__init__(config)
        self.model = build_model(config.to_model_config())
        self._states_recorder = StatesRecorder(self.model)  # output_hidden_states: hooks that record when asked
        self.post_init()
        if config.arch == "ngpt":
            _keep_on_the_sphere(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """nn.Module's, then an nGPT is registered for the renormalization after every optimizer step, as __init__
        registers it: copy.deepcopy (a reference or EMA model, a kept best model) and pickle (torch.save(model))
        make a model without __init__, and a copy fine-tuned left the sphere unnoticed (0.0092 off unit norm after
        3 AdamW steps at lr 1e-3)."""
        super().__setstate__(state)
        if getattr(getattr(self, "config", None), "arch", None) == "ngpt":
            _keep_on_the_sphere(self)

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing: ngpt_ds.model initializes (and, for nGPT, normalizes) its own weights."""

    @classmethod
    def auto_map(cls) -> dict[str, str]:
        """config.json's `auto_map`: where trust_remote_code finds the classes (the files of the folder), the same
        for the causal LM and the base model of one family."""
        config_class = cast(type, cls.config_class)
        arch = cast(Any, config_class).arch
        return {
            "AutoConfig": f"configuration_ngpt.{config_class.__name__}",
            "AutoModel": f"modeling_ngpt.{BASE_MODELS[arch].__name__}",
            "AutoModelForCausalLM": f"modeling_ngpt.{MODELS[arch].__name__}",
        }

    def _prepare_attention_mask_for_generation(
        self, inputs_tensor: torch.Tensor, generation_config: GenerationConfig, model_kwargs: dict[str, Any]
    ) -> torch.LongTensor:
        """All ones: transformers would mark every pad id as padding, and the pad id is `</s>`, which a
        prompt may hold as text (the training data separates documents with it). It does so only when
        generate runs without EOS (eos_token_id=None), when the pad id no longer equals the EOS id.
        A mask the caller passes is used as given (the tokenizer's, for a padded batch)."""
        return cast(
            torch.LongTensor, torch.ones(inputs_tensor.shape[:2], dtype=torch.long, device=inputs_tensor.device)
        )

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed

    def prune_heads(self, heads_to_prune: dict[int, list[int]]) -> None:
        """Refused in one line: it was an AttributeError ("... has no attribute 'prune_heads'"; transformers 5 removed
        the method), and transformers' prune_linear_layer on a projection one about a missing `bias`. A pruned block
        would hold fewer heads than config.json's one n_head for every block, which from_pretrained checks the
        weights against, so the saved model could not be loaded again."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot prune attention heads ({heads_to_prune}): every block has the config's "
            f"n_head ({self.config.n_head}), which from_pretrained checks the weights against. Train or fine-tune a "
            "model with fewer heads (n_head in the model YAML) instead"
        )

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """transformers' count, whose exclude_embeddings leaves out nn.Embedding weights only: ngpt_ds's input
        embedding (a TokenEmbedding) is left out here, as Llama's embed_tokens is (the head stays counted). It was
        counted, and the Trainer's total_flos (6 x tokens x this count) with it."""
        count = super().num_parameters(only_trainable=only_trainable)
        embedding = cast(DeclaredMatrix, self.get_input_embeddings()).weight
        if exclude_embeddings and (embedding.requires_grad or not only_trainable):
            count -= embedding.numel()
        return count

    def resize_token_embeddings(  # type: ignore[override]  # returns ngpt_ds's TokenEmbedding, not nn.Embedding
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Module:
        """transformers' resize_token_embeddings for ngpt_ds's layers: ngpt_ds.hf.vocab_resize.resize_vocabulary."""
        return resize_vocabulary(self.model, self.config, new_num_tokens, pad_to_multiple_of, mean_resizing)

    def _check_call(self, kwargs: dict[str, Any]) -> None:
        """The refusals of forward's arguments that ngpt_ds's blocks cannot honour, and of training an nGPT
        where it would leave the sphere."""
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError(f"{type(self).__name__} takes input_ids, not inputs_embeds")
        if self.training and self.config.arch == "ngpt" and torch.is_grad_enabled():
            _check_renormalized_here(self)
            _check_scales_train(self)
        if asked(kwargs, self.config, "output_attentions"):
            raise ValueError(
                f"{type(self).__name__} cannot return attention weights (output_attentions=True): its attention "
                "runs in torch's scaled_dot_product_attention, which computes none. Pass output_attentions=False"
            )

    def _run_blocks(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache: Cache | None,
        use_cache: bool | None,
        kwargs: dict[str, Any],
    ) -> tuple[torch.Tensor, Cache | None, list[torch.Tensor] | None]:
        """input_ids [B, T] through the embedding and the blocks: (the last block's output [B, T, d], the cache to
        return (None unless use_cache), the hidden states of output_hidden_states or None: the embedding and each
        block's output, the last before the GPT baseline's final norm, which `_last_hidden_state` applies). See
        forward."""
        check_token_ids(input_ids, None, cast(DeclaredMatrix, self.model.embed).weight.shape[0])
        cache = kwargs.get("past_key_values") if cache is None else cache
        use_cache = self.config.use_cache if use_cache is None else use_cache
        use_cache = cache_while_training(self, use_cache, cache)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if cache is not None:
            check_cache(cache)
        # A cache passed in holds the positions before input_ids: it is used also with use_cache=False, as
        # transformers' own models use it (use_cache only says whether to create and return one).
        binding = CacheBinding(cache, self.config.n_layer) if cache is not None else None
        past = 0 if cache is None else cache.get_seq_length()
        key_mask, positions = padding(input_ids, attention_mask, position_ids, past)
        recording = asked(kwargs, self.config, "output_hidden_states")
        if recording:
            self._states_recorder.start(cast(nn.ModuleList, self.model.blocks))
        try:
            if key_mask is None and positions is None:
                h = self.model.hidden_states(input_ids, binding)  # no padding: the training path, unchanged
            else:
                h = self.model.hidden_states(input_ids, binding, positions=positions, key_mask=key_mask)
        finally:
            states = self._states_recorder.stop() if recording else None
        blocks = len(cast(nn.ModuleList, self.model.blocks))
        if states is not None and len(states) != blocks + 1:
            raise RuntimeError(
                f"output_hidden_states recorded {len(states)} states for {blocks} blocks: blocks put into the model "
                "after it was built record their states in eager mode only (cache_and_states.StatesRecorder). Run "
                "one eager forward with output_hidden_states=True before compiling, or build the model with them"
            )
        return h, cache if use_cache else None, states

    def _last_hidden_state(self, h: torch.Tensor) -> torch.Tensor:
        """The last block's output h as transformers' Llama gives its last hidden state: after the GPT baseline's
        final RMSNorm; nGPT's as it is (no final norm: on the sphere, eq. 3 of the paper)."""
        final_norm = getattr(self.model, "final_norm", None)
        return h if final_norm is None else final_norm(h)

    @staticmethod
    def _hidden_states(states: list[torch.Tensor] | None, last: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """output_hidden_states' tuple: the recorded states with the last one `last` (_last_hidden_state's)."""
        return None if states is None else (*states[:-1], last)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple[Any, ...]:
        """input_ids [B, T] -> logits [B, T, V] (the last `logits_to_keep` positions when > 0).

        With a `cache` (transformers' name; `past_key_values` is its older one, also taken), input_ids are the
        positions after the cached ones. `attention_mask` [B, cached + T]: 1 for tokens, 0 for padding (either
        side). `position_ids` [B, T] or [1, T]: RoPE positions; by default attention_mask.cumsum(-1) - 1 (at
        least 0) when a mask is given, else the cache's length onwards. `labels` are the input ids (shifted
        here, -100 ignored), as everywhere in transformers; the loss is their mean cross-entropy, or with
        `num_items_in_batch` (the Trainer's count of the targets in all the micro-batches of one optimizer step)
        their sum divided by it, so that the accumulated gradient is the whole batch's. With no target at all, the
        loss is transformers' (NaN, or 0 over num_items_in_batch) and every gradient 0 (causal_loss).
        """
        self._check_call(kwargs)
        # shift_labels: the targets already shifted, one per position (transformers' loss takes them in place of
        # labels, as context-parallel training passes them); they were ignored, the loss None or from labels.
        shift_labels = kwargs.get("shift_labels")
        for given in (labels, shift_labels):
            if given is not None:
                check_labels(input_ids, given, logits_to_keep)
                check_token_ids(input_ids, given, cast(DeclaredMatrix, self.model.embed).weight.shape[0])
        h, cache, recorded = self._run_blocks(input_ids, attention_mask, position_ids, cache, use_cache, kwargs)
        last = None if recorded is None else self._last_hidden_state(h)
        states = self._hidden_states(recorded, last) if last is not None else None
        # The last position alone, as ngpt_ds.infer.generate computes it (the same numbers, token for token).
        kept = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
        if last is not None and hasattr(self.model, "final_norm"):
            # The GPT baseline's final norm ran for hidden_states[-1]: its output goes to the head, not h normed again.
            logits = cast(GPT, self.model).normed_logits(last[:, kept])
        else:
            logits = self.model.logits(h[:, kept])
        loss = None
        num_items = kwargs.get("num_items_in_batch")
        if shift_labels is not None:
            targets = shift_labels.masked_fill(shift_labels == -100, -1)
            loss = causal_lm_loss(self.model, logits, targets, num_items)
        elif labels is not None:
            targets = labels[:, 1:].masked_fill(labels[:, 1:] == -100, -1)
            loss = causal_lm_loss(self.model, logits[:, :-1], targets, num_items)
        output = CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache, hidden_states=states)
        return _as_asked(output, self.config, kwargs)


def _as_asked(output: Any, config: Any, kwargs: dict[str, Any]) -> Any:
    """return_dict=False (or config.return_dict False): a tuple of the fields that are not None, as transformers'
    models return it (its can_return_tuple). The output was returned as is, a dict, so `loss, logits =
    model(ids, labels=ids, use_cache=False, return_dict=False)` unpacked its keys: the strings 'loss', 'logits'."""
    return_dict = kwargs.get("return_dict")
    return (
        output if (getattr(config, "return_dict", True) if return_dict is None else return_dict) else output.to_tuple()
    )


class _NGPTFamily:
    """What nGPT's causal LM and base model share; `self.model` is ngpt_ds.model.NGPT."""

    config_class = NGPTConfig
    #: device_map="auto" places each block whole on one device. Split, a block's alphas sat on another device than
    #: its attention output, which eq. 10's update combines with them (the GPT: its norm and its residual add).
    _no_split_modules: set[str] | list[str] | None = ["NormalizedBlock"]
    #: from_pretrained(dtype=torch.bfloat16 or float16) keeps the scaling vectors (alpha, s_qk, s_u, s_v, s_z;
    #: ngpt_ds.model.layers.ScaleVector) in float32: stored at their `scale` (1/sqrt(d), or 1 for s_u and s_v), a
    #: 16-bit copy lost every optimizer step smaller than half its spacing there (0.0039 at 1), so fine-tuning
    #: froze them all (0 of 1920 values moved in 10 AdamW steps at lr 1e-4). The forward rounds their effective
    #: values to the activations' dtype, as before.
    _keep_in_fp32_modules_strict: set[str] | list[str] | None = ["attn_alpha", "mlp_alpha", "s_qk", "s_u", "s_v", "s_z"]


class _GPTBaselineFamily:
    """What the GPT baseline's causal LM and base model share; `self.model` is ngpt_ds.model.GPT."""

    config_class = GPTBaselineConfig
    _no_split_modules: set[str] | list[str] | None = ["PreNormBlock"]  # as nGPT's


class NGPTForCausalLM(_NGPTFamily, OutputHead, _NgptDsPreTrainedModel, GenerationMixin):
    """nGPT (arXiv 2410.01131) as a transformers causal LM."""


class GPTBaselineForCausalLM(_GPTBaselineFamily, OutputHead, _NgptDsPreTrainedModel, GenerationMixin):
    """ngpt_ds's GPT baseline as a transformers causal LM."""


class _BaseModel(_NgptDsPreTrainedModel):
    """The transformer without its output head, for `AutoModel`: the same weights, under the same names, as the
    causal LM's (base_model_prefix "model"), so either class loads the other's folder unchanged."""

    def forward(  # type: ignore[override]  # the causal LM's arguments without labels
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple[Any, ...]:
        """input_ids [B, T] -> last_hidden_state [B, T, d]: nGPT's last block output, on the unit sphere (the
        input of its logits, eq. 3 of the paper), or the GPT baseline's after its final RMSNorm, as transformers'
        Llama gives it. The arguments are the causal LM's (see its forward), without labels."""
        self._check_call(kwargs)
        h, cache, recorded = self._run_blocks(input_ids, attention_mask, position_ids, cache, use_cache, kwargs)
        last = self._last_hidden_state(h)  # once: output_hidden_states' last entry is this tensor
        states = self._hidden_states(recorded, last)
        return _as_asked(
            BaseModelOutputWithPast(last_hidden_state=last, cache=cache, hidden_states=states), self.config, kwargs
        )


class NGPTModel(_NGPTFamily, _BaseModel):
    """nGPT's transformer without its output head, for `AutoModel`."""


class GPTBaselineModel(_GPTBaselineFamily, _BaseModel):
    """The GPT baseline's transformer without its output head, for `AutoModel`."""


MODELS = {"ngpt": NGPTForCausalLM, "gpt": GPTBaselineForCausalLM}
BASE_MODELS = {"ngpt": NGPTModel, "gpt": GPTBaselineModel}
