"""Model construction from a config."""

from __future__ import annotations

from ngpt_ds.model.config import ModelConfig
from ngpt_ds.model.gpt import GPT
from ngpt_ds.model.lm import CausalLM
from ngpt_ds.model.ngpt import NGPT


def build_model(config: ModelConfig) -> CausalLM:
    """An nGPT or GPT for `config` (validated), in fp32 on the CPU."""
    config.validate()
    return {"ngpt": NGPT, "gpt": GPT}[config.arch](config)
