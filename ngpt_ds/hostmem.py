"""The host allocator setting of a CPU training process: freed buffers are kept for reuse.

glibc's malloc serves every request above its mmap threshold (32 MiB at most, by default)
with a fresh memory mapping and unmaps it again on free. A training step allocates and frees
such buffers every step: the fp32 logits of the loss (2048 x 4096 x 4 bytes = 32 MiB at the
default preset), the scaled copy of a 32k x 1024 output head and its gradients. Each fresh
mapping is then page-faulted in, 4 KiB at a time, and that costs about as much as the pass that
fills it (docs/benchmarks.md, "MFU"). PyTorch's GPU allocator keeps freed blocks for the next
request; this does the same for host memory by raising glibc's mmap and trim thresholds, so
large buffers come from and go back to the heap.

The cost: memory freed inside the process is not handed back to the operating system, so the
resident size stays at the step's peak instead of falling between steps. CPU training processes
set it (`ngpt_ds.train.builder.init_process_group`), and so do `generate` and `evaluate` on the
CPU (`ngpt_ds.cli.keep_freed_memory_on_cpu`); on a GPU machine host memory is not on the step's
path, and a checkpoint save's host buffers should go back to the system.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import Mapping

#: Turn the setting off: NGPT_DS_HOST_MALLOC=system leaves glibc's defaults.
OPT_OUT_VARIABLE = "NGPT_DS_HOST_MALLOC"
#: Requests below this come from the heap (glibc's default caps the threshold at 32 MiB).
MMAP_THRESHOLD_BYTES = 1 << 30
#: Free memory at the top of the heap kept before any is returned to the system.
TRIM_THRESHOLD_BYTES = (1 << 31) - 1

# mallopt parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_ALLOCATOR_LIBRARIES = ("jemalloc", "tcmalloc", "mimalloc")


def keep_freed_memory(env: Mapping[str, str] = os.environ) -> str:
    """Raise glibc's mmap and trim thresholds for this process; returns what was done, in words.

    Left alone, with the reason returned: a system without glibc; NGPT_DS_HOST_MALLOC=system;
    a user's own malloc settings (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, or malloc
    tunables in GLIBC_TUNABLES); another allocator preloaded (jemalloc, tcmalloc, mimalloc).
    """
    if env.get(OPT_OUT_VARIABLE, "").strip().lower() == "system":
        return f"left at glibc's defaults ({OPT_OUT_VARIABLE}=system)"
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return "left as it is (not glibc)"
    own = [name for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_") if name in env]
    if "glibc.malloc" in env.get("GLIBC_TUNABLES", ""):
        own.append("GLIBC_TUNABLES")
    if own:
        return f"left to the user's settings ({', '.join(own)})"
    preloaded = [name for name in _ALLOCATOR_LIBRARIES if name in env.get("LD_PRELOAD", "")]
    if preloaded:
        return f"left to the preloaded {preloaded[0]}"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "left as it is (no mallopt in this C library)"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # Setting the mmap threshold also stops glibc from adjusting it (and the trim threshold) itself.
    if not (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)):
        return "left as it is (glibc refused the thresholds)"
    return (
        f"freed buffers below {MMAP_THRESHOLD_BYTES >> 20} MiB kept for reuse ({OPT_OUT_VARIABLE}=system turns it off)"
    )
