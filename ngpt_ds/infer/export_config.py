"""An export's config.json: reading it, and checking it against the model config the export recorded in
model.safetensors.

config.json is a text file people edit. An edit that keeps every weight's shape (n_head 2 -> 4 at the same
width, rope_base, norm_eps, the scaling constants' base values) passed every shape check and gave wrong
outputs silently. So the export also writes the model config into the safetensors header's `__metadata__`
(RECORD_KEY), which is written with the weights, and load_export compares the two field by field.
Exports written before the record have no RECORD_KEY: they load as before, without this check.
"""

from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Any

from ngpt_ds.errors import UNPARSABLE, NgptConfigError
from ngpt_ds.infer.export_layout import CONFIG_FILE, EXPORT_FORMAT, EXPORT_VERSION, TOKENIZER_FILE, WEIGHTS_FILE
from ngpt_ds.model import ModelConfig
from ngpt_ds.train.manifest import RefusedFile, read_capped

RECORD_KEY = "ngpt_ds_model_config"
"""The safetensors `__metadata__` key holding the exported model config as JSON (ModelConfig.to_dict)."""


def config_record(config: ModelConfig) -> dict[str, str]:
    """The `__metadata__` entries an export writes with its weights: the model config, as JSON."""
    return {RECORD_KEY: json.dumps(config.to_dict(), sort_keys=True)}


def check_recorded_config(metadata: dict[str, str] | None, config: ModelConfig, folder: Path) -> None:
    """Refuse an export whose config.json's model section differs from the config recorded in its weights
    file. Nothing to check without a record (an export from before it was written)."""
    text = (metadata or {}).get(RECORD_KEY)
    if text is None:
        return
    weights = folder / WEIGHTS_FILE
    try:
        recorded = json.loads(text)
    except UNPARSABLE:
        recorded = None
    if not isinstance(recorded, dict):
        raise NgptConfigError(
            f"{weights}: its recorded model config ({RECORD_KEY}) is not a JSON mapping; the file was altered. "
            "Export the checkpoint again"
        )
    current = config.to_dict()
    for name in sorted(set(recorded) & set(current)):
        if recorded[name] != current[name] or isinstance(recorded[name], bool) != isinstance(current[name], bool):
            raise NgptConfigError(
                f"{folder / CONFIG_FILE}: model.{name} = {reprlib.repr(current[name])[:80]}, but the weights in "
                f"{WEIGHTS_FILE} were exported with model.{name} = {reprlib.repr(recorded[name])[:80]}: "
                f"config.json was edited after the export, and these weights give wrong outputs under it. "
                f"Set model.{name} back to {reprlib.repr(recorded[name])[:80]} in config.json, or export the "
                "checkpoint again"
            )


HF_MODEL_TYPES = ("ngpt", "ngpt_gpt_baseline")
"""The model_type of a transformers export (ngpt_ds.hf.configuration_ngpt), for the message that names one."""


MAX_CONFIG_JSON_BYTES = 2**20
"""The largest export config.json read: launch/export.py writes a few KiB (the model config, the tokenizer's hash, the
training provenance). A larger one was read whole and parsed before any message: a config.json kept as a sparse file
(a few bytes in an archive kept with its holes) of any size was read whole into memory."""


def read_config_json(path: Path) -> Any:
    """The JSON in an export's config.json, a regular file (or a link to one) of at most MAX_CONFIG_JSON_BYTES, read
    no further than that. Raises RefusedFile (a ValueError, as UNPARSABLE's are) for any other file, OSError when it
    cannot be read, UNPARSABLE's errors when it is no JSON."""
    return json.loads(read_capped(path, MAX_CONFIG_JSON_BYTES).decode("utf-8"))


def read_export_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if path.exists() and not path.is_file():  # a named pipe there made load_export wait forever on reading it
        raise NgptConfigError(f"{path} is not a regular file; export the checkpoint again")
    try:
        config = read_config_json(path)
    except RefusedFile as err:
        raise NgptConfigError(
            f"{path} {err.what}: an export's {CONFIG_FILE} is a regular file of at most {MAX_CONFIG_JSON_BYTES} bytes "
            "(launch/export.py writes a few KiB), so it was not read; the folder was altered. Export the checkpoint again"
        ) from None
    except (OSError, *UNPARSABLE) as err:
        raise NgptConfigError(
            f"{path} cannot be read ({type(err).__name__}: {err}); export the checkpoint again"
        ) from None
    if isinstance(config, dict) and "format" not in config and config.get("model_type") in HF_MODEL_TYPES:
        raise NgptConfigError(
            f"{folder} is a transformers export (export.py --format hf): load it with transformers "
            "(AutoModelForCausalLM.from_pretrained, README 'Using a trained model') or lm-eval's hf model "
            f"(lm_eval --model hf --model_args pretrained={folder},trust_remote_code=True --tasks ...), or the ngpt_ds "
            f"lm-eval model (ngpt-lm-eval --model ngpt_ds --model_args path={folder}); for generate.py and "
            "evaluate.py, export the checkpoint with --format ngpt_ds"
        )
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise NgptConfigError(
            f"{path}: format = {config.get('format') if isinstance(config, dict) else None!r}, "
            f"expected {EXPORT_FORMAT!r}: not a folder written by launch/export.py"
        )
    if config.get("format_version") != EXPORT_VERSION:
        raise NgptConfigError(
            f"{path}: format_version {config.get('format_version')!r} is not supported by this "
            f"ngpt_ds (it reads version {EXPORT_VERSION}); export the checkpoint again"
        )
    # The sections read besides `model` (validated by ModelConfig), as the export writes them.
    for section, key, what in (
        ("tokenizer", "sha256", "a sha256 hex digest"),
        ("training", "data_dir", "a folder path"),
    ):
        found = config.get(section)
        bad = None
        if not isinstance(found, (dict, type(None))):
            bad = (section, found, "a mapping")
        elif not isinstance(value := (found or {}).get(key), (str, type(None))):
            bad = (f"{section}.{key}", value, what)
        if bad is not None:
            raise NgptConfigError(
                f"{path}: {bad[0]} = {reprlib.repr(bad[1])[:80]} must be {bad[2]}; the file was not written by "
                "launch/export.py or was altered. Export the checkpoint again"
            )
    return config


def export_tokenizer_file(folder: Path, tok_meta: dict[str, Any]) -> Path:
    """The tokenizer file named in config.json: a plain file name in the export folder, never a path that
    leads out of it (an export is one self-contained folder; a shared one must not read elsewhere).

    The name is checked, not where the file resolves to: an export whose files are symbolic links (the
    Hugging Face Hub cache's snapshots/REV/tokenizer.model -> ../../blobs/HASH, DVC, git-annex, `cp -rs`)
    is the folder its owner made, and the sha256 config.json records checks the file's content."""
    name = tok_meta.get("file", TOKENIZER_FILE)
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise NgptConfigError(
            f"{folder / CONFIG_FILE}: tokenizer.file = {name!r} must name a file inside the export "
            f"folder (normally {TOKENIZER_FILE!r}): a plain file name, without a folder; export the checkpoint again"
        )
    return folder / name
