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

`from_pretrained` checks the weights as ngpt_ds.infer.loading checks an export's: every tensor present
(transformers would leave a missing one as uninitialized memory: `_init_weights` does nothing), none
unknown, all finite, nGPT's sphere matrices unit norm, and every one of a float dtype
(ngpt_ds.model.saved_weights, which an export carries too); and config.json against the model config an export
records in its weights (ngpt_ds.hf.recorded_config).

Fine-tuning keeps nGPT an nGPT: after every step of a torch optimizer (transformers' Trainer's, or one of
your own over model.parameters()) the nGPT matrices it updated are renormalized, as nGPT's training does
(_renormalize_after_step), a copy's too (copy.deepcopy, pickle). DeepSpeed's and FSDP's flat copies are not
reached, so training under them is refused (_check_renormalized_here), except under DeepSpeed with ngpt_ds's
KeepOnTheSphere callback (ngpt_ds.hf.trainer), which renormalizes DeepSpeed's fp32 masters. Loaded in bf16 or
fp16, an nGPT keeps its scaling vectors (alpha, s_qk, s_u, s_v, s_z) in float32, where optimizer steps on them are
not lost; training one whose scaling vectors were converted to 16 bits is refused (_check_scales_train).
`resize_token_embeddings` resizes the embedding, the head and s_z, keeping new rows on the sphere (vocab_resize).
`device_map="auto"` keeps each block on one device (_no_split_modules). forward honours `output_hidden_states`
(compiled too, in one graph: cache_and_states.StatesRecorder) and `return_dict=False`; `output_attentions=True` is
refused (SDPA computes no weights), and so are token ids outside the vocabulary.

This file is also copied into every `--format hf` export (with its ngpt_ds imports made relative).
"""

from __future__ import annotations

import importlib
import inspect
import os
from itertools import chain
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import modeling_utils as hf_modeling_utils
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.hf.activation_checkpointing import ActivationCheckpointing, cache_while_training
from ngpt_ds.hf.cache_and_states import CacheBinding, StatesRecorder, asked
from ngpt_ds.hf.configuration_ngpt import GPTBaselineConfig, NGPTConfig
from ngpt_ds.hf.forward_inputs import check_cache, check_labels, check_token_ids, padding
from ngpt_ds.hf.recorded_config import record_in_saved_weights, weights_files_state
from ngpt_ds.hf.training_guards import (
    _SPHERE_MODELS,  # noqa: F401  # re-exported: ngpt_ds.hf.trainer and tests import it from here
    _check_gathered,
    _check_renormalized_here,
    _check_scales_train,
    _keep_on_the_sphere,
)
from ngpt_ds.hf.vocab_resize import resize_vocabulary
from ngpt_ds.hf.weight_files import check_weight_files, stored_values, weights_source
from ngpt_ds.model.factory import build_model
from ngpt_ds.model.gpt import GPT
from ngpt_ds.model.layers import DeclaredMatrix
from ngpt_ds.model.saved_weights import (
    NORM_TOLERANCE,
    check_shards,
    weights_mismatch,
)
from ngpt_ds.model.sphere import norm_deviation, sphere_matrices


class _NgptDsPreTrainedModel(ActivationCheckpointing, PreTrainedModel):
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
    def from_pretrained(  # type: ignore[override]  # transformers' parameters, passed on unchanged
        cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any
    ) -> Any:
        """transformers' from_pretrained, then the checks of ngpt_ds.infer.loading (see the module docstring)."""
        check_shards(pretrained_model_name_or_path, kwargs.get("subfolder") or "")  # an index's names: unchecked there
        want_info = kwargs.pop("output_loading_info", False)
        # With output_loading_info, transformers returns (model, info), though it hints the model alone.
        loaded: Any = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        model, info = loaded
        model._check_loaded(pretrained_model_name_or_path, info)
        return (model, info) if want_info else model

    @staticmethod
    def _load_pretrained_model(  # type: ignore[override]  # transformers' parameters, passed on unchanged
        model: PreTrainedModel, state_dict: dict | None, checkpoint_files: list[str] | None, *args: Any, **kwargs: Any
    ) -> Any:
        """transformers' loading of the weights into `model`, after ngpt_ds.hf.weight_files checks them."""
        load_config = args[0] if args else kwargs.get("load_config")
        check_weight_files(model, state_dict, checkpoint_files, load_config)
        return PreTrainedModel._load_pretrained_model(model, state_dict, checkpoint_files, *args, **kwargs)

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

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]  # transformers' parameters, passed on unchanged
        """transformers' save_pretrained; as ngpt_ds's installed code, also `auto_map` in config.json and the
        modeling files it names (ngpt_ds.hf.export.write_code), so the folder loads with trust_remote_code
        without ngpt_ds, as an export does. transformers copies only the file of a class it loaded with
        trust_remote_code (an export's copy of this file, whose imports are relative: nothing to add then). The
        weights written record the model config, as an export's do (ngpt_ds.hf.recorded_config).

        With push_to_hub=True the folder is uploaded after the modeling files are written, as transformers
        uploads it (the files saved, by their timestamps): transformers' own save_pretrained uploads before
        returning, which left the modeling files out of the Hub repository its auto_map points at."""
        installed = __name__ == "ngpt_ds.hf.modeling_ngpt"
        if installed and not getattr(self.config, "auto_map", None):
            self.config.auto_map = self.auto_map()
        named = inspect.signature(PreTrainedModel.save_pretrained).bind(self, save_directory, *args, **kwargs).arguments
        named.pop("self")
        if named.get("state_dict") is None:  # the Trainer passes the gathered state_dict under ZeRO 3
            _check_gathered(self)  # ZeRO-3 partitions were saved as empty tensors
        extra = named.pop("kwargs", {})
        push = named.pop("push_to_hub", False)
        upload = bool(push) and self.should_save_on_this_rank(named.get("is_main_process", True))
        hub = {k: extra.pop(k) for k in ("commit_message", "repo_id", "create_pr") if k in extra}
        if upload:  # the other keyword arguments go to create_repo, as in transformers
            repo_id, timestamps = self._hub_repo(save_directory, hub.get("repo_id"), named.get("token"), extra)
        saving = self.should_save_on_this_rank(named.get("is_main_process", True))
        before = weights_files_state(save_directory) if saving else {}
        super().save_pretrained(**named, **({} if upload else extra))
        if saving and not named.get("distributed_checkpoint") and not getattr(self, "_hf_peft_config_loaded", False):
            record_in_saved_weights(save_directory, before, self.config)  # from_pretrained checks config.json by it
        if installed and named.get("is_main_process", True):
            # By name: an import statement would make the export copy ngpt_ds.hf.export (and all it imports) too.
            importlib.import_module("ngpt_ds.hf.export").write_code(Path(save_directory))
        if upload:
            token = named.get("token")
            # transformers' steps after saving (PreTrainedModel.save_pretrained with push_to_hub=True).
            card = hf_modeling_utils.create_and_tag_model_card(repo_id, self.model_tags, token=token)
            card.save(os.path.join(save_directory, "README.md"))
            self._upload_modified_files(
                save_directory,
                repo_id,
                timestamps,
                commit_message=hub.get("commit_message"),
                token=token,
                create_pr=hub.get("create_pr", False),
            )

    def _hub_repo(
        self, save_directory: str | os.PathLike, repo_id: str | None, token: Any, create_kwargs: dict[str, Any]
    ) -> tuple[str, dict[str, float]]:
        """transformers' steps before saving with push_to_hub=True: create the Hub repository (the folder's name
        unless repo_id is given; the other keyword arguments go to create_repo) and note the folder's files'
        timestamps (the files saved after are the ones uploaded)."""
        os.makedirs(save_directory, exist_ok=True)
        if repo_id is None:
            repo_id = os.fspath(save_directory).split(os.path.sep)[-1]
        if token is not None:
            create_kwargs = {**create_kwargs, "token": token}
        created = hf_modeling_utils.hf_api().create_repo(repo_id, exist_ok=True, **create_kwargs)
        return created.repo_id, self._get_files_timestamps(save_directory)

    def _check_loaded(self, name_or_path: str | os.PathLike, info: dict[str, Any]) -> None:
        source = weights_source(name_or_path, getattr(self, "_ngpt_ds_weight_files", []))
        parts = []
        # transformers' mismatched_keys (filled with ignore_mismatched_sizes=True; without it transformers raises
        # itself) hold (name, shape in the file, shape by config.json): those tensors were left uninitialized.
        mismatched = [
            f"{name} ({list(saved)} in the file, {list(wanted)} by config.json)"
            for name, saved, wanted in sorted(info.get("mismatched_keys") or (), key=lambda k: k[0])
        ]
        for what, names in (
            ("missing", sorted(info.get("missing_keys") or ())),
            ("mismatched", mismatched),
            ("unexpected", sorted(info.get("unexpected_keys") or ())),
        ):
            if names:
                parts.append(f"{what} {', '.join(names[:8])}{' …' if len(names) > 8 else ''}")
        if parts:
            raise weights_mismatch(source, parts, ignored=bool(mismatched))
        # A device_map that offloads to disk leaves those parameters on the meta device: their values are read
        # from the weights files, one at a time (skipped, a NaN or off-sphere folder loaded without a word).
        offloaded = {n for n, p in self.named_parameters() if p.device.type == "meta"}
        values = chain(
            ((n, p) for n, p in self.named_parameters() if n not in offloaded),
            stored_values(getattr(self, "_ngpt_ds_weight_files", []), offloaded, f"{self.base_model_prefix}."),
        )
        on_sphere = {f"{self.base_model_prefix}.{m.name}": m.norm_dim for m in sphere_matrices(self.model)}
        bad, deviation = [], 0.0
        for name, value in values:
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(name)
            elif name in on_sphere:
                deviation = max(deviation, norm_deviation(value, on_sphere[name]))
        if bad:
            raise NgptConfigError(
                f"{source}: {', '.join(bad[:8])} hold NaN or infinite values; the weights are corrupt. "
                "Export the checkpoint again"
            )
        if on_sphere:
            # The loaded dtype's tolerance, or a stored one's when coarser: an nGPT saved in float16 and loaded
            # with dtype=torch.float32 was refused as off the sphere (0.000243 > 1e-4), as ngpt_ds's loader
            # does not (it allows for the stored dtype).
            dtypes = {next(self.parameters()).dtype, *getattr(self, "_ngpt_ds_stored_dtypes", ())}
            tolerance = max(NORM_TOLERANCE.get(d, 1e-2) for d in dtypes)
            if not deviation <= tolerance:
                raise NgptConfigError(
                    f"{source}: an nGPT weight matrix is not unit norm along its declared dim (largest "
                    f"| ||w|| - 1 | = {deviation:.3g} > {tolerance:g}); the weights are corrupt, or were changed "
                    "without renormalizing them (nGPT's training renormalizes after every step: ngpt_ds.train.hypersphere)"
                )

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
        their sum divided by it, so that the accumulated gradient is the whole batch's.
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
        if shift_labels is not None:
            targets = shift_labels.masked_fill(shift_labels == -100, -1)
            loss = self.model.cross_entropy(logits, targets)
        elif labels is not None:
            targets = labels[:, 1:].masked_fill(labels[:, 1:] == -100, -1)
            loss = self.model.cross_entropy(logits[:, :-1], targets)
        if loss is not None:
            num_items = kwargs.get("num_items_in_batch")
            if num_items is not None:
                counted = int((targets != -1).sum())
                # The mean times its count is the sum; none counted: 0 (the mean is 0/0), with a zero gradient.
                loss = (loss * counted if counted else logits.sum() * 0.0) / num_items
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


class NGPTForCausalLM(_NGPTFamily, _NgptDsPreTrainedModel, GenerationMixin):
    """nGPT (arXiv 2410.01131) as a transformers causal LM."""


class GPTBaselineForCausalLM(_GPTBaselineFamily, _NgptDsPreTrainedModel, GenerationMixin):
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
