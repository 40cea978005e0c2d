"""transformers configs for nGPT and the GPT baseline: a PretrainedConfig that carries every
ModelConfig field under its own name, so `config.json` is ngpt_ds's model section plus what
transformers adds.

This file is also copied into every `--format hf` export (with its ngpt_ds imports made
relative), so it must import nothing of ngpt_ds beyond ngpt_ds.model and ngpt_ds.errors.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig

from ngpt_ds.errors import NgptConfigError, Problems, abridged
from ngpt_ds.hf.token_ids import check_token_ids
from ngpt_ds.model.config import ModelConfig
from ngpt_ds.model.saved_weights import TOKENIZER_JSON_SHA256, check_tokenizer_files

# transformers' generic names for the fields generation and the KV cache look up.
_ATTRIBUTE_MAP = {
    "num_hidden_layers": "n_layer",
    "hidden_size": "n_embd",
    "num_attention_heads": "n_head",
    "max_position_embeddings": "seq_len",
}


class _NgptDsConfig(PretrainedConfig):
    """Shared by both families; `arch` is fixed by the subclass (a config.json describes one family)."""

    arch = ""
    attribute_map = _ATTRIBUTE_MAP

    def __init__(self, **kwargs):
        kwargs.pop("arch", None)
        # transformers' names (hidden_size=64) are taken as the fields they stand for: PretrainedConfig sets them
        # through attribute_map, and the defaults below then overwrote them (a 256-wide model, without a word).
        for alias, name in _ATTRIBUTE_MAP.items():
            if alias in kwargs:
                value = kwargs.pop(alias)
                if name in kwargs and kwargs[name] != value:
                    raise NgptConfigError(
                        f"{_source(type(self).__name__, kwargs.get('name_or_path'))}: {alias} = {value!r} and "
                        f"{name} = {kwargs[name]!r} disagree ({alias} is transformers' name for {name}); give one of them"
                    )
                kwargs[name] = value
        _check_dtype(type(self).__name__, kwargs)
        folder = kwargs.get("name_or_path")
        if isinstance(folder, (str, os.PathLike)) and os.path.isdir(folder):  # AutoTokenizer reads the config first
            marker = kwargs.get("ngpt_ds_export")
            recorded = marker.get(TOKENIZER_JSON_SHA256) if isinstance(marker, dict) else None
            texts = check_tokenizer_files(folder, recorded)  # tokenizer.json, when recorded, is the export's own
            vocab = kwargs.get("vocab_size")
            if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 0:  # else to_model_config names it
                fix = "copy the whole folder again, or export the checkpoint again"
                check_token_ids(Path(folder), texts, vocab, fix, recorded=isinstance(recorded, str) and bool(recorded))
        defaults = ModelConfig()
        values = {
            f.name: kwargs.pop(f.name, getattr(defaults, f.name))
            for f in dataclasses.fields(ModelConfig)
            if f.name != "arch"
        }
        use_cache = kwargs.pop("use_cache", True)
        kwargs.setdefault("tie_word_embeddings", False)  # input and output embeddings are separate matrices
        super().__init__(**kwargs)
        for name, value in values.items():
            setattr(self, name, value)
        self.use_cache = use_cache

    def to_model_config(self) -> ModelConfig:
        """The ngpt_ds ModelConfig these fields describe, validated; errors name the config.json read."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig) if f.name != "arch"}
        source = _source(type(self).__name__, self.name_or_path)
        # ModelConfig takes null for "the dataset's tokenizer decides" (a training config); a model has its size.
        vocab = values["vocab_size"]
        p = Problems(source)
        p.check(
            isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 0,
            "model.vocab_size",
            vocab,
            "must be a positive integer, the number of token ids the model's embedding holds "
            "(a model's config.json gives it; only a training config may leave it to the dataset)",
        )
        p.raise_if_any()
        return ModelConfig(arch=self.arch, **values).validate(source)

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> tuple[dict, dict]:
        """transformers' get_config_dict, plus the folder (or Hub id) read as `name_or_path`, so that the errors of
        __init__ (_check_dtype) and to_model_config name the config.json they come from: from_pretrained set it only
        after __init__, and NGPTConfig.from_pretrained not at all (errors named no file)."""
        config_dict, rest = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
            read = str(pretrained_model_name_or_path)  # both: a saved `_name_or_path` ("") overwrote `name_or_path`
            config_dict = {**config_dict, "name_or_path": read, "_name_or_path": read}
        return config_dict, rest

    @classmethod
    def from_model_config(cls, config: ModelConfig, **kwargs) -> _NgptDsConfig:
        values = {k: v for k, v in config.to_dict().items() if k != "arch"}
        return cls(**values, **kwargs)


#: config.json's `dtype` (or its older name `torch_dtype`): the dtype from_pretrained loads the weights in by default.
_DTYPES = ("float32", "bfloat16", "float16", "float64")


def _check_dtype(class_name: str, kwargs: dict) -> None:
    """`dtype` must name a float dtype: transformers looks any string up as an attribute of torch, so an edited or
    crafted config.json ended in an unrelated traceback naming no file ('float8_e4m3fn': "couldn't find storage
    object Float8_e4m3fnStorage"; 'Tensor', '__class__', 'int8': TypeError, IndexError, ValueError)."""
    for key in ("dtype", "torch_dtype"):
        value = kwargs.get(key)
        name = str(value).removeprefix("torch.") if isinstance(value, (str, torch.dtype)) else None
        if value is not None and name not in _DTYPES:
            raise NgptConfigError(
                f"{_source(class_name, kwargs.get('name_or_path'))}: config.json's {key} = {abridged(value)} must "
                f"be one of {', '.join(_DTYPES)} (the dtype the weights load in by default), or absent; the file was "
                "edited, damaged or is from another program"
            )


def _source(class_name: str, name_or_path: str | None) -> str:
    """How errors name a config: its class, and the config.json read when it came from one (name_or_path, the
    folder or Hub id, is set by from_pretrained and passed to __init__ by from_dict)."""
    if not name_or_path:
        return class_name
    folder = Path(name_or_path)
    return f"{class_name} ({folder.resolve() if folder.is_dir() else name_or_path}/config.json)"


class NGPTConfig(_NgptDsConfig):
    """nGPT, the normalized Transformer (arXiv 2410.01131)."""

    model_type = "ngpt"
    arch = "ngpt"
    __init__ = _NgptDsConfig.__init__  # defined here, or transformers' dataclass would generate one


class GPTBaselineConfig(_NgptDsConfig):
    """ngpt_ds's GPT baseline (pre-norm RMSNorm, SwiGLU, RoPE)."""

    model_type = "ngpt_gpt_baseline"
    arch = "gpt"
    __init__ = _NgptDsConfig.__init__


CONFIGS = {"ngpt": NGPTConfig, "gpt": GPTBaselineConfig}
