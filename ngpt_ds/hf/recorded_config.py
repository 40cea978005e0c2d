"""The model config an `--format hf` export records in its weights, and from_pretrained's check against it.

config.json is a text file people edit. An edit that keeps every weight's shape (n_head, transformers'
num_attention_heads, 2 -> 4 at the same width; rope_base, norm_eps, the scaling constants) loaded silently and
gave other outputs. So the export (ngpt_ds.hf.export.write_hf_export) also writes the model config into the
safetensors header's `__metadata__` (RECORD_KEY: the entry and JSON of the native export's record), and
from_pretrained compares the config it loaded with it, field by field, before it loads the weights.

A weights file without the record loads as before, without this check: an export from before the record, or a
folder written by save_pretrained (a fine-tune's), which writes none.

This file is also copied into every `--format hf` export (with its ngpt_ds imports made relative), so the only
part of ngpt_ds it may use is ngpt_ds.errors.
"""

from __future__ import annotations

import json
import os
import reprlib
from pathlib import Path
from typing import Any

from ngpt_ds.errors import UNPARSABLE, NgptConfigError

RECORD_KEY = "ngpt_ds_model_config"
"""The safetensors `__metadata__` key holding the exported model config as JSON (ModelConfig.to_dict)."""


def check_recorded_config(metadata: dict[str, str] | None, config: Any, weights: str | os.PathLike) -> None:
    """Refuse `config` (an NGPTConfig or GPTBaselineConfig, as loaded) when it differs from the model config
    recorded in the header of the safetensors file `weights` (its `metadata`). Nothing to check without a record.

    `arch` is not compared: config.json names the family by model_type, and weights of the other family are
    refused by their names (missing and unexpected tensors)."""
    text = (metadata or {}).get(RECORD_KEY)
    if text is None:
        return
    try:
        recorded = json.loads(text)
    except UNPARSABLE:
        recorded = None
    if not isinstance(recorded, dict):
        raise NgptConfigError(
            f"{weights}: its recorded model config ({RECORD_KEY}) is not a JSON mapping; the file was altered. "
            "Export the checkpoint again"
        )
    current = config.to_model_config().to_dict()
    aliases = {name: alias for alias, name in getattr(config, "attribute_map", {}).items()}
    for name in sorted((set(recorded) & set(current)) - {"arch"}):
        was, now = recorded[name], current[name]
        if was != now or isinstance(was, bool) != isinstance(now, bool):
            shown = f"{name} ({aliases[name]})" if name in aliases else name
            was_text, now_text = reprlib.repr(was)[:80], reprlib.repr(now)[:80]
            raise NgptConfigError(
                f"{Path(os.path.abspath(Path(weights).parent)) / 'config.json'}: {shown} = {now_text}, but the "
                f"weights in {Path(weights).name} were exported with {name} = {was_text}: config.json was edited "
                "after the export (or from_pretrained was given another value), and these weights give wrong "
                f"outputs under it. Set {name} back to {was_text} in config.json, or export the checkpoint again"
            )
