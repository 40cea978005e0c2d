"""The weights files `from_pretrained` reads, checked before transformers loads them into the model
(ngpt_ds.hf.modeling_ngpt's _load_pretrained_model), as ngpt_ds.infer.loading checks an export's.

This file is also copied into every `--format hf` export (with its ngpt_ds imports made relative).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import PreTrainedModel
from transformers import modeling_utils as hf_modeling_utils

from ngpt_ds.hf.recorded_config import check_recorded_config
from ngpt_ds.model.saved_weights import (
    HEADER_DTYPES,
    NORM_TOLERANCE,
    check_before_filling,
    check_dtypes,
    check_host_memory,
    check_weight_file,
    header_shapes,
    numel,
    unreadable_weights,
)


def weights_source(name_or_path: Any, files: list[str]) -> str:
    """How errors name the weights read: the folder's model.safetensors, its single pytorch_model.bin, or the folder."""
    weights = Path(str(name_or_path)) / "model.safetensors"
    if weights.is_file():
        return str(weights)
    if len(files) == 1 and not files[0].endswith(".safetensors"):  # a folder of pytorch_model.bin
        return files[0]
    return f"{name_or_path} (its model.safetensors)"


def _check_before_allocating(model: PreTrainedModel, files: list[str], load_config: Any, saved: dict) -> None:
    """saved_weights.check_before_filling for transformers' load of `files` into `model` (still on the meta device)."""
    prefix = f"{model.base_model_prefix}."
    if not any(name.startswith(prefix) for name in saved):  # a bare CausalLM's names: transformers adds the prefix
        saved = {prefix + name: shape for name, shape in saved.items()}
    check_before_filling(
        {name: tuple(t.shape) for name, t in model.state_dict().items()},
        saved,
        next(model.parameters()).dtype,
        weights_source(getattr(load_config, "pretrained_model_name_or_path", None), [str(f) for f in files]),
        ignore_mismatched=bool(getattr(load_config, "ignore_mismatched_sizes", False)),
        on_host=getattr(load_config, "device_map", None) is None,  # a device_map places the model itself
    )


def check_weight_files(
    model: PreTrainedModel, state_dict: dict | None, checkpoint_files: list[str] | None, load_config: Any
) -> None:
    """The checks of the weights transformers is about to load into `model`: their dtypes are checked as
    ngpt_ds.infer.loading checks an export's (saved_weights.check_dtypes): transformers casts every tensor to the model's
    dtype, so int8, bool or complex weights loaded (complex without its imaginary part; a GPT's any of
    them without a word) and float8 ones ended in an unrelated message. The safetensors headers are read,
    not the tensors; a pickled weights file (pytorch_model.bin, which transformers still loads when a folder
    has no safetensors) is read as transformers reads it, on the meta device (no tensor data); a state_dict
    passed to from_pretrained is checked as given."""
    found: list[tuple[dict[str, Any], str]] = []  # (name -> dtype or its safetensors header name, source)
    headers: list[tuple[dict[str, str] | None, str]] = []  # (__metadata__, file): the exported config record
    if state_dict is not None:
        found.append(({name: t.dtype for name, t in state_dict.items()}, "the state_dict given to from_pretrained"))
    shapes: dict[str, tuple[int, ...]] = {}  # every file's tensors: compared with the model's before it is filled
    for file in checkpoint_files or []:
        check_weight_file(file)  # before any open: a named pipe listed by the index hung the load
        if str(file).endswith(".safetensors"):
            # Before safe_open, which maps the file (twice: under `ulimit -v` a file of half the limit failed there): a
            # sparse file declaring a model larger than the machine, with a config.json to match.
            size, held = os.path.getsize(file), sum(map(numel, (header_shapes(file) or {}).values()))
            check_host_memory(
                size + 4 * held,
                str(file),
                f"its weights ({size >> 20} MiB) and the model built from them ({held} parameters)",
                "the file is damaged or altered, or the model is too large for this machine",
            )
            with unreadable_weights(file), safe_open(str(file), "pt") as f:
                shapes.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})  # noqa: SIM118
                found.append(({name: f.get_slice(name).get_dtype() for name in f.keys()}, str(file)))  # noqa: SIM118
                headers.append((f.metadata(), str(file)))
        else:  # a .bin: its int8 weights loaded without a word, its float16 nGPT was refused as off the sphere
            with unreadable_weights(file):
                saved = hf_modeling_utils.load_state_dict(str(file), map_location="meta")
            found.append(({name: t.dtype for name, t in saved.items()}, str(file)))
            shapes.update({name: tuple(t.shape) for name, t in saved.items()})
    for dtypes, source in found:
        check_dtypes(dtypes, source)
    for metadata, file in headers:  # an edited config.json that keeps every weight's shape
        check_recorded_config(metadata, model.config, file)
    if state_dict is None and checkpoint_files:  # after the record's check, whose message names the edited field
        _check_before_allocating(model, checkpoint_files, load_config, shapes)
    # The unit-norm check allows for the coarsest dtype the weights were stored in (_check_loaded).
    stored = {HEADER_DTYPES.get(d, d) if isinstance(d, str) else d for dtypes, _ in found for d in dtypes.values()}
    setattr(model, "_ngpt_ds_stored_dtypes", {d for d in stored if d in NORM_TOLERANCE})  # noqa: B010
    # The files read, for _check_loaded's messages (a folder without model.safetensors was named by it).
    setattr(model, "_ngpt_ds_weight_files", [str(f) for f in checkpoint_files or []])  # noqa: B010


def stored_values(files: list[str], names: set[str], prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for each of `names` the safetensors `files` hold, read one at a time: the values of the
    parameters a `device_map` offloaded to disk, which stay on the meta device in the model (a file's bare names
    get `prefix`, as transformers gives them)."""
    for file in files:
        if not str(file).endswith(".safetensors"):
            continue
        with unreadable_weights(file), safe_open(str(file), "pt") as f:
            for key in f.keys():  # noqa: SIM118
                name = key if key in names else prefix + key
                if name in names:
                    yield name, f.get_tensor(key)
