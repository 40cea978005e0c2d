"""What a low address-space limit (`ulimit -v`, RLIMIT_AS) stops in ngpt-prepare, said in one line with the fix.

Under such a limit a thread datasets starts to read the corpus (a pool of them resolves a corpus's files), or a
library imported late (torch, which datasets imports when it opens a stream), fails to map its memory: a 40-line
traceback ending in "RuntimeError: can't start new thread" or "ImportError: libtorch_cpu.so: failed to map
segment from shared object", which names neither the limit nor the fix.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator

from ngpt_ds.errors import NgptConfigError

_THREAD = "can't start new thread"
_LIBRARY = "failed to map segment from shared object"


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 1 << 30 else f"{n >> 20} MiB"


def _mapped() -> int | None:
    """Bytes this process has mapped (VmSize), None where /proc does not say."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def limit_failure(err: BaseException) -> NgptConfigError | None:
    """The one-line error for `err` where it is a thread or a library that could not be mapped under a finite
    address-space limit; None for anything else (a traceback is then the right report)."""
    limit, hard = resource.getrlimit(resource.RLIMIT_AS)
    if limit == resource.RLIM_INFINITY:
        return None
    if isinstance(err, RuntimeError) and _THREAD in str(err):
        stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
        each = f"`ulimit -s`, here {_size(stack)}" if stack != resource.RLIM_INFINITY else "`ulimit -s`"
        what = f"could not start a thread (datasets reads a corpus with threads, each of which maps a stack of {each})"
        fixes = ", or lower `ulimit -s`" if stack != resource.RLIM_INFINITY and stack >= 64 << 20 else ""
    elif isinstance(err, ImportError) and _LIBRARY in str(err):
        what = f"could not load a library ({str(err).splitlines()[0]})"
        fixes = ""
    else:
        return None
    mapped = _mapped()
    held = f", {_size(mapped)} of it mapped already" if mapped is not None else ""
    return NgptConfigError(
        f"this process {what} under its address-space limit (`ulimit -v`) of {_size(limit)}{held}. {_raise(limit, hard, root=os.geteuid() == 0)}{fixes}"
    )


def limit_in_force() -> str:
    """'' where this process has no address-space limit; else a sentence naming it and how to raise it, for a
    MemoryError that may be the limit's rather than the data's: under `ulimit -v` a folder of twenty 15 kB files
    'ran out of memory' and was told it held a document too large to read."""
    limit, hard = resource.getrlimit(resource.RLIMIT_AS)
    if limit == resource.RLIM_INFINITY:
        return ""
    mapped = _mapped()
    held = f", {_size(mapped)} of it mapped" if mapped is not None else ""
    return (
        f"; this process runs under an address-space limit (`ulimit -v`) of {_size(limit)}{held}, which may be "
        f"what ran out. {_raise(limit, hard, root=os.geteuid() == 0)}"
    )


def _raise(limit: int, hard: int, *, root: bool) -> str:
    """How to raise the soft limit `limit`: a user's `ulimit -v` cannot pass the hard limit `hard` (a scheduler's
    memory limit, say; bash's `ulimit -v N` sets both), where the advice to run `ulimit -v unlimited` failed
    ("ulimit: virtual memory: cannot modify limit: Operation not permitted"). root may raise both."""
    if root or hard == resource.RLIM_INFINITY:
        return (
            "Raise the limit (`ulimit -v unlimited`, or a few GiB more, in the shell or job script before ngpt-prepare)"
        )
    if limit < hard:
        return (
            f"Raise the limit, up to its hard limit of {_size(hard)} (`ulimit -v {hard >> 10}`, in the shell or job "
            "script before ngpt-prepare)"
        )
    return (
        "It is also the hard limit, which only an administrator or the job's scheduler raises: ask for a higher one "
        "(the job's virtual memory request), or run ngpt-prepare where the limit is higher"
    )


@contextlib.contextmanager
def limit_named() -> Iterator[None]:
    """Turn what limit_failure names into its one-line NgptConfigError (exit status 2 at the command line)."""
    try:
        yield
    except (RuntimeError, ImportError) as err:
        failure = limit_failure(err)
        if failure is None:
            raise
        raise failure from None
