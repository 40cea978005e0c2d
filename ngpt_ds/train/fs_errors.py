"""How a failed filesystem operation reads in a message: an errno's text and file, torch.save's zip writer's
failure with the free space. Plain strings, so that a problem can travel to every rank (all_gather_object)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

#: What torch.save's zip writer says when the file under it fails (it raises RuntimeError, no errno).
TORCH_WRITE_FAILURES = ("PytorchStreamWriter", "inline_container", "iostream error", "file write failed")


def describe(err: BaseException, folder: Path) -> str:
    """An OSError by its errno's text and file; torch's zip writer's failure with the free space; any other
    error (an OSError without an errno, such as shutil's; a bug; a RecursionError on a crafted folder) by its
    type and text, so that it can travel to every rank as a problem."""
    if isinstance(err, OSError) and err.errno is not None:
        where = f" ({err.filename})" if err.filename else ""
        return f"{os.strerror(err.errno)}{where}"
    if not _is_torch_write_failure(err):
        return f"{type(err).__name__}: {str(err).strip()}"
    text = f"torch.save failed ({str(err).strip()})"
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return text
    full = ": no space left on device" if free < 2**20 else ""
    return f"{text}; {gib(free)} free on the filesystem{full}"


def is_write_failure(err: BaseException) -> bool:
    """An OSError, or torch's zip writer reporting a failed write."""
    return isinstance(err, OSError) or _is_torch_write_failure(err)


def _is_torch_write_failure(err: BaseException) -> bool:
    return isinstance(err, RuntimeError) and any(marker in str(err) for marker in TORCH_WRITE_FAILURES)


def gib(n: float) -> str:
    return f"{n / 2**30:.3f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
