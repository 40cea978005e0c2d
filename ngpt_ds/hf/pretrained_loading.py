"""transformers' from_pretrained for ngpt_ds's models (modeling_ngpt), with the checks ngpt_ds.infer.loading makes of
an export's weights: every tensor present (transformers would leave a missing one as uninitialized memory:
`_init_weights` does nothing), none unknown, all finite, nGPT's sphere matrices unit norm, and every one of a float
dtype (ngpt_ds.model.saved_weights, which an export carries too); and config.json against the model config an export
records in its weights (ngpt_ds.hf.recorded_config, through ngpt_ds.hf.weight_files).

This file is also copied into every `--format hf` export (with its ngpt_ds imports made relative).
"""

from __future__ import annotations

import json
import os
from itertools import chain
from typing import Any

import torch
from transformers import PreTrainedModel

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.hf.weight_files import check_weight_files, stored_values, weights_source
from ngpt_ds.model.lm import CausalLM
from ngpt_ds.model.saved_weights import NORM_TOLERANCE, check_shards, weights_mismatch
from ngpt_ds.model.sphere import norm_deviation, sphere_matrices


class CheckedLoading(PreTrainedModel):
    """The loading half of modeling_ngpt's models: from_pretrained and the checks after it."""

    model: CausalLM  # the wrapped ngpt_ds model, built by modeling_ngpt

    @classmethod
    def from_pretrained(  # type: ignore[override]  # transformers' parameters, passed on unchanged
        cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any
    ) -> Any:
        """transformers' from_pretrained, then the checks of ngpt_ds.infer.loading (see the module docstring)."""
        _refuse_quantization(cls, kwargs.get("quantization_config"))
        _refuse_quantization(cls, _saved_quantization(pretrained_model_name_or_path, kwargs))
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
        quantizer = getattr(load_config, "hf_quantizer", None)  # also from a quantization_config in config.json
        _refuse_quantization(type(model), None if quantizer is None else quantizer.quantization_config)
        check_weight_files(model, state_dict, checkpoint_files, load_config)
        return PreTrainedModel._load_pretrained_model(model, state_dict, checkpoint_files, *args, **kwargs)

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


def _saved_quantization(name_or_path: str | os.PathLike, kwargs: dict[str, Any]) -> Any:
    """The quantization_config of the config from_pretrained is about to read (a config passed in, or config.json
    of a local folder), so that it is refused before transformers validates its quantizer's environment: a
    config.json with a bitsandbytes or Quanto quantization_config had stopped in transformers' ImportError
    ("... requires bitsandbytes: `pip install -U bitsandbytes>=0.46.1`"), asking for a package that would not help.
    A hub repo id's config.json is checked once transformers has read it (`_load_pretrained_model`); None where
    none can be read here (transformers then says why)."""
    config = kwargs.get("config")
    if config is not None and not isinstance(config, (str, os.PathLike)):
        return getattr(config, "quantization_config", None)  # a PreTrainedConfig
    path = os.fspath(config if config is not None else name_or_path)
    if kwargs.get("subfolder"):
        path = os.path.join(path, kwargs["subfolder"])
    file = path if os.path.isfile(path) else os.path.join(path, "config.json")
    if not os.path.isfile(file):  # a hub repo id, or no config.json: transformers' own error
        return None
    try:
        with open(file, "rb") as f:
            saved = json.loads(f.read())
    except (OSError, ValueError):  # transformers reads it next and says what is wrong
        return None
    return saved.get("quantization_config") if isinstance(saved, dict) else None


def _refuse_quantization(cls: type, quantization_config: Any) -> None:
    """NgptConfigError for any transformers quantization (bitsandbytes, GPTQ, AWQ, ...): its quantizers replace
    torch.nn.Linear layers and ngpt_ds's projections (ngpt_ds.model.layers.Projection) are none, so with bitsandbytes
    installed the model loaded in float32, every weight unquantized, while `is_loaded_in_4bit` said True (and
    transformers warned only "... using eetq but no linear modules were found")."""
    if quantization_config is None:
        return
    method = (
        quantization_config.get("quant_method")
        if isinstance(quantization_config, dict)
        else getattr(quantization_config, "quant_method", None)
    )
    method = getattr(method, "value", method)
    raise NgptConfigError(
        f"{cls.__name__} cannot be quantized by transformers (quantization_config with quant_method {method!r}): "
        "its quantizers replace torch.nn.Linear layers, and ngpt_ds's projections are none, so the model would "
        "load unquantized while reporting itself quantized. Load it without quantization_config (and remove one "
        "from config.json); dtype=torch.bfloat16 halves its memory"
    )
