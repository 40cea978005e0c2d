"""What a saved weight may be, checked by every loader of saved weights: ngpt_ds's own
(ngpt_ds.infer.loading) and transformers' from_pretrained (ngpt_ds.hf.modeling_ngpt, which every
`--format hf` export carries with this file, so the checks hold without ngpt_ds installed too)."""

from __future__ import annotations

import os
import stat
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
