"""transformers integration: nGPT and the GPT baseline as `PreTrainedModel`s, their configs, the
sentencepiece tokenizer as a transformers tokenizer, and the `--format hf` export.

Importing this module registers both families with `AutoConfig`, `AutoModel` (the transformer without its
output head) and `AutoModelForCausalLM`.
`import ngpt_ds` does that lazily: it imports this module when (and only if) transformers is
imported, so scripts that never touch transformers do not pay its import time.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from ngpt_ds.hf.configuration_ngpt import CONFIGS, GPTBaselineConfig, NGPTConfig
from ngpt_ds.hf.modeling_ngpt import (
    BASE_MODELS,
    MODELS,
    GPTBaselineForCausalLM,
    GPTBaselineModel,
    NGPTForCausalLM,
    NGPTModel,
)

__all__ = [
    "BASE_MODELS",
    "CONFIGS",
    "GPTBaselineConfig",
    "GPTBaselineForCausalLM",
    "GPTBaselineModel",
    "MODELS",
    "NGPTConfig",
    "NGPTForCausalLM",
    "NGPTModel",
    "register",
]


def register() -> None:
    """Register both families with the transformers Auto classes (idempotent)."""
    for arch, config_class in CONFIGS.items():
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, BASE_MODELS[arch], exist_ok=True)
        AutoModelForCausalLM.register(config_class, MODELS[arch], exist_ok=True)


register()
