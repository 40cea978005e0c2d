"""What a saved weight may be, checked by every loader of saved weights: ngpt_ds's own
(ngpt_ds.infer.loading) and transformers' from_pretrained (ngpt_ds.hf.modeling_ngpt, which every
`--format hf` export carries with this file, so the checks hold without ngpt_ds installed too); and where it
may be: every shard a folder's weights index names, and its single weights file, is a file of that folder
(check_shards)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import torch

from ngpt_ds.errors import NgptConfigError

#: Largest allowed | ||row|| - 1 | of a sphere matrix by the dtype its weights were stored in: fp32 weights
#: are renormalized after every step (to ~1e-7); a bf16 copy of unit vectors is off by up to ~2^-9 per element.
NORM_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-4, torch.bfloat16: 1e-2, torch.float16: 2e-3}

WEIGHT_DTYPES = tuple(NORM_TOLERANCE)
"""The dtypes a saved weight may have: float32, float64, bfloat16, float16 (read as float32)."""

HEADER_DTYPES = {"F32": torch.float32, "F64": torch.float64, "BF16": torch.bfloat16, "F16": torch.float16}
"""safetensors' names of WEIGHT_DTYPES (a header's `dtype`)."""


def check_dtypes(dtypes: dict[str, Any], source: str) -> None:
    """Every weight must be float32, float64, bfloat16 or float16 (`dtypes`: name -> torch dtype, or the
    safetensors header's name of one): float8 ended in a traceback (isfinite is not implemented for it), and
    int8, bool or complex weights were cast to float32 and loaded without a word (complex dropping its
    imaginary part)."""
    bad = sorted(
        (name, dtype)
        for name, dtype in dtypes.items()
        if (HEADER_DTYPES.get(dtype) if isinstance(dtype, str) else dtype) not in WEIGHT_DTYPES
    )
    if bad:
        shown = ", ".join(f"{name} ({str(dtype).removeprefix('torch.')})" for name, dtype in bad[:8])
        raise NgptConfigError(
            f"{source}: {shown}{' …' if len(bad) > 8 else ''}: weights must be float32, float64, bfloat16 or "
            "float16; the files are damaged, altered or from another program"
        )


def check_weight_file(path: str | os.PathLike) -> None:
    """A weights file must be a regular file (or a link to one, as the Hugging Face cache keeps them): a named pipe
    named by a folder's model.safetensors.index.json (transformers opens the shards it lists without a look) made
    from_pretrained wait on its first read forever, without a word; a device would be read as weights."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing: the reader that opens it names it
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "not a regular file"
        raise NgptConfigError(
            f"{path} is {kind}, not a weights file; the files are damaged, altered or from another program"
        )


MAX_INDEX_BYTES = 16 << 20
"""Largest model.safetensors.index.json read: a real one lists each weight once (about 100 bytes a name)."""


def _outside(path: Path, folder: Path) -> str | None:
    """Why the shard `path` (named by an index in `folder`) is outside `folder`, or None."""
    if not path.is_symlink():
        return None
    real, bounds = os.path.realpath(path), os.path.realpath(folder)
    repo = folder.parent.parent  # a Hugging Face cache snapshot, models--OWNER--NAME/snapshots/REV, links to its blobs
    if folder.parent.name == "snapshots" and repo.name.startswith("models--"):
        bounds = os.path.realpath(repo / "blobs")
    return None if os.path.commonpath([real, bounds]) == bounds else f"is a link to {real}, outside the folder"


def check_shards(name_or_path: str | os.PathLike | None, subfolder: str = "") -> None:
    """Every shard an index file of a local folder names (its weight_map's values) must be a file of that folder:
    transformers joins the names onto the folder unchecked, so an index naming "/abs/x.safetensors",
    "../other/x.safetensors" or a link pointing elsewhere made from_pretrained read weights outside the folder
    the user named. Checked before transformers reads the index; a hub repo id (not a folder) is left to it."""
    if name_or_path is None or not os.path.isdir(name_or_path) or not (Path(name_or_path) / subfolder).is_dir():
        return  # a state_dict given, a hub repo id (its files are fetched by name into the cache), or no folder
    folder = Path(name_or_path) / subfolder
    for index in sorted(folder.glob("*.index*.json")):  # model.safetensors.index.json, its variants, the .bin's
        check_weight_file(index)  # a named pipe would be read forever
        if index.stat().st_size > MAX_INDEX_BYTES:
            raise NgptConfigError(f"{index} is over {MAX_INDEX_BYTES >> 20} MiB; a weights index is far smaller")
        try:
            weight_map = json.loads(index.read_bytes()).get("weight_map")
        except (ValueError, AttributeError):
            raise NgptConfigError(f"{index} is not a JSON object; the files are damaged or altered") from None
        for key, name in (weight_map or {}).items() if isinstance(weight_map, dict) else ():
            plain = isinstance(name, str) and name not in ("", ".", "..") and not os.path.isabs(name)
            if not plain or any(sep in name for sep in ("/", "\\", os.sep, "\0")):
                why: str | None = "is not the name of a file in the folder"
            else:
                why = _outside(folder / name, folder)
            if why:
                raise NgptConfigError(
                    f"{index}: weight_map[{key!r}] = {name!r} {why}; "
                    "a shard must be a file of the folder itself (the files are damaged, altered or from another program)"
                )
    # The single weights file transformers reads where there is no index (model.safetensors, pytorch_model.bin, or
    # their variants): a link out of the folder read weights elsewhere, and a named pipe hung the load.
    for single in sorted([*folder.glob("model*.safetensors"), *folder.glob("pytorch_model*.bin")]):
        check_weight_file(single)
        why = _outside(single, folder)
        if why:
            raise NgptConfigError(
                f"{single} {why}; a weights file must be a file of the folder itself (the files are damaged, "
                "altered or from another program)"
            )
