"""The file layout of an ngpt_ds export (ngpt_ds.infer.export writes it, ngpt_ds.infer.loading reads it):
one folder with the weights, the config (model, tokenizer and training provenance) and the tokenizer."""

from __future__ import annotations

from pathlib import Path

EXPORT_FORMAT = "ngpt_ds-export"
EXPORT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"


def is_export(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file() and (Path(path) / WEIGHTS_FILE).exists()
