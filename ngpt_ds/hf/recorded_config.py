"""The model config an `--format hf` export records in its weights, and from_pretrained's check against it.

config.json is a text file people edit. An edit that keeps every weight's shape (n_head, transformers'
num_attention_heads, 2 -> 4 at the same width; rope_base, norm_eps, the scaling constants) loaded silently and
gave other outputs. So the export (ngpt_ds.hf.export.write_hf_export) also writes the model config into the
safetensors header's `__metadata__` (RECORD_KEY: the entry and JSON of the native export's record), and
from_pretrained compares the config it loaded with it, field by field, before it loads the weights.

save_pretrained writes the record too (record_in_saved_weights: transformers' save_pretrained writes the
`__metadata__` {"format": "pt"} and takes no more, so the header is written again after the save): a model loaded,
fine-tuned and saved again kept no record before, and its folder loaded an edited config.json without a word. A
weights file without the record loads as before, without this check: an export or a save_pretrained folder from
before the record.

This file is also copied into every `--format hf` export (with its ngpt_ds imports made relative), so the only
part of ngpt_ds it may use is ngpt_ds.errors.
"""

from __future__ import annotations

import json
import os
import reprlib
import shutil
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


def config_record(config: Any) -> dict[str, str]:
    """The `__metadata__` entries recording `config` (an NGPTConfig or GPTBaselineConfig): its model config as JSON,
    the native export's record (ngpt_ds.infer.export_config.config_record) of the same ModelConfig."""
    return {RECORD_KEY: json.dumps(config.to_model_config().to_dict(), sort_keys=True)}


def weights_files_state(folder: str | os.PathLike) -> dict[str, tuple[int, int, int]]:
    """The safetensors files in `folder` (none if it does not exist) -> (inode, size, mtime in ns): compared after a
    save, it tells the files the save wrote from those it left alone (another model's, an adapter's)."""
    try:
        entries = list(os.scandir(os.fspath(folder)))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    state = {}
    for entry in entries:
        if entry.name.endswith(".safetensors") and entry.is_file(follow_symlinks=False):
            st = entry.stat(follow_symlinks=False)
            state[entry.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return state


def record_in_saved_weights(folder: str | os.PathLike, before: dict[str, tuple[int, int, int]], config: Any) -> None:
    """Add config_record(`config`) to every safetensors file save_pretrained wrote in `folder` (the files new or
    changed since weights_files_state(folder) returned `before`)."""
    entries = config_record(config)
    for name, signature in sorted(weights_files_state(folder).items()):
        if before.get(name) != signature:
            add_metadata(Path(folder) / name, entries)


def add_metadata(path: Path, entries: dict[str, str]) -> None:
    """Add `entries` to the `__metadata__` of the safetensors file at `path` (transformers' save_pretrained writes
    {"format": "pt"} and takes no more): the JSON header is written again, padded to 8 bytes with spaces as
    safetensors pads it, and the tensor data after it is copied byte for byte (offsets count from the data's start)."""
    tmp = path.with_name(f"{path.name}.tmp")
    with path.open("rb") as src:
        header = json.loads(src.read(int.from_bytes(src.read(8), "little")))
        header["__metadata__"] = {**header.get("__metadata__", {}), **entries}
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % 8)
        with tmp.open("wb") as dst:
            dst.write(len(text).to_bytes(8, "little") + text)
            shutil.copyfileobj(src, dst, 1 << 24)
    os.replace(tmp, path)
