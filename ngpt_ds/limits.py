"""What a low address-space limit (`ulimit -v`, RLIMIT_AS) or a large `ulimit -s` stops in a command, said in one
line with the fix, for every command (ngpt-train, ngpt-prepare, ngpt-export, ngpt-generate, ngpt-evaluate): `Threads`
names the command and its threads; `limit_named` wraps each command's body (ngpt_ds/cli). A module of its own, not in
data/, because every command uses it; it reads only this process's limits and /proc, and imports nothing heavy.

Under such a limit a thread datasets starts to read the corpus (a pool of them resolves a corpus's files), or a
library imported late (torch, which datasets imports when it opens a stream), fails to map its memory: a 40-line
traceback ending in "RuntimeError: can't start new thread" or "ImportError: libtorch_cpu.so: failed to map
segment from shared object", which names neither the limit nor the fix.

numpy's OpenBLAS starts a thread per core at numpy's import (ngpt_ds.data.prepare imports numpy); where one cannot
be started under such a limit, or with a large `ulimit -s`, OpenBLAS prints "pthread_create failed" and raises SIGINT
in the process (OpenBLAS's blas_thread_init), and the command ended on "interrupted", exit status 130, as if Ctrl-C
had stopped it. Without `ulimit -v`, a large `ulimit -s` alone (64 GiB) stops datasets' first thread too, with the
same traceback.

The other commands met the same limits in threads of their own, in tracebacks of 36 to 59 lines, exit status 1:
ngpt-export, ngpt-generate and ngpt-evaluate in the pool that hashes a checkpoint's files ("RuntimeError: can't start
new thread"), a training rank in torch's rendezvous store, whose C++ thread fails with the system's own words
("RuntimeError: Resource temporarily unavailable", EAGAIN). torch imports numpy inside its own import and swallows
OpenBLAS's SIGINT there: those commands go on past OpenBLAS's lines to the first thread that cannot start.

A low `ulimit -u` (RLIMIT_NPROC, every process and thread of the user; root is not bound) stops the same threads with
the same words: `task_limit` names it, for these commands and for a training rank's rendezvous
(ngpt_ds.rendezvous_peers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import resource
import traceback
from collections.abc import Iterator

from ngpt_ds.errors import NgptConfigError

_THREAD = "can't start new thread"
_LIBRARY = "failed to map segment from shared object"
_THREAD_EAGAIN = os.strerror(errno.EAGAIN)
"""A C++ thread (std::thread: torch's rendezvous store, gloo) that could not start: its std::system_error, as torch
raises it, says no more than this."""
_BIG_STACK = 64 << 20
"""A `ulimit -s` from which a thread's stack is named as what may not fit (the default is 8 MiB)."""


@dataclasses.dataclass(frozen=True)
class Threads:
    """The command a line names in its fix, and the threads it starts (what a thread that could not start was for)."""

    command: str
    started: str
    """'datasets reads a corpus with threads': what starts threads, each of which maps a stack of `ulimit -s`."""
    theirs: str
    """"datasets' threads": the threads that map such a stack too (OPENBLAS_NUM_THREADS=1 does not spare them)."""


PREPARE = Threads("ngpt-prepare", "datasets reads a corpus with threads", "datasets' threads")
TRAIN = Threads(
    "the training command",
    "a training rank starts threads for its rendezvous, its collectives and its checks of a checkpoint's files",
    "a training rank's threads",
)
PREPARE_WORKERS = Threads(
    "ngpt-prepare",
    "ngpt-prepare's --workers processes are fed by a pool's two threads in this process",
    "the pool's threads",
)
_HASHED = "a checkpoint's files are hashed by a pool of threads"
EXPORT = Threads("ngpt-export", _HASHED, "the hashing threads")
GENERATE = Threads("ngpt-generate", _HASHED, "the hashing threads")
EVALUATE = Threads("ngpt-evaluate", _HASHED, "the hashing threads")


def _thread_failed(err: BaseException) -> bool:
    """A thread that could not start: Python's threading, or a C++ std::thread (its EAGAIN, and nothing else)."""
    return isinstance(err, RuntimeError) and (_THREAD in str(err) or str(err).strip() == _THREAD_EAGAIN)


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


def limit_failure(err: BaseException, threads: Threads = PREPARE) -> NgptConfigError | None:
    """The one-line error for `err` where it is a thread or a library that could not be mapped under a finite
    address-space limit, or a thread that could not start under a large `ulimit -s` or under `ulimit -u`; None for
    anything else (a traceback is then the right report)."""
    limit, hard = resource.getrlimit(resource.RLIMIT_AS)
    if limit == resource.RLIM_INFINITY:
        return _stack_failure(err, threads) or _task_failure(err, threads)
    if _thread_failed(err):
        stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
        each = f"`ulimit -s`, here {_size(stack)}" if stack != resource.RLIM_INFINITY else "`ulimit -s`"
        what = f"could not start a thread ({threads.started}, each of which maps a stack of {each})"
        fixes = ", or lower `ulimit -s`" if stack != resource.RLIM_INFINITY and stack >= _BIG_STACK else ""
    elif isinstance(err, ImportError) and _LIBRARY in str(err):
        what = f"could not load a library ({str(err).splitlines()[0]})"
        fixes = ""
    else:
        return None
    mapped = _mapped()
    held = f", {_size(mapped)} of it mapped already" if mapped is not None else ""
    return NgptConfigError(
        f"this process {what} under its address-space limit (`ulimit -v`) of {_size(limit)}{held}. "
        f"{_raise(limit, hard, root=os.geteuid() == 0, command=threads.command)}{fixes}"
    )


def _stack_failure(err: BaseException, threads: Threads) -> NgptConfigError | None:
    """Without an address-space limit, a thread that could not start under a large `ulimit -s` (64 GiB: each
    thread's stack is that size, more than the machine lets a process map) was the same traceback."""
    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    if not _thread_failed(err):
        return None
    if stack == resource.RLIM_INFINITY or stack < _BIG_STACK:
        return None
    return NgptConfigError(
        f"this process could not start a thread ({threads.started}, each of which maps a stack of `ulimit -s`, here "
        f"{_size(stack)}). Lower `ulimit -s` (8 MiB is the usual) in the shell or job script before {threads.command}"
    )


def tasks_of(uid: int) -> int | None:
    """How many processes and threads the user `uid` runs (what `ulimit -u` counts), from /proc; None if unread."""
    count, read = 0, False
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields["Threads"])
            read = True
        except (OSError, KeyError, ValueError, IndexError):  # a process that ended meanwhile
            continue
    return count if read else None


def task_limit(command: str, again: str) -> tuple[str, str] | None:
    """Where a thread that could not start was stopped by `ulimit -u` (RLIMIT_NPROC, which counts every process and
    thread of the user): (what the limit is and what the user runs, the fix, `again` after raising it, naming
    `command`). None where that limit is not the cause: none set, root (whom it does not bind), or a `ulimit -v` or a
    large `ulimit -s`, which `limit_failure` names."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    if soft == resource.RLIM_INFINITY or os.getuid() == 0:
        return None
    if resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY:
        return None
    if stack != resource.RLIM_INFINITY and stack >= _BIG_STACK:  # a stack that may not fit
        return None
    tasks = tasks_of(os.getuid())
    running = f", and runs {tasks} now" if tasks is not None else ""
    where = f"in the shell or job script before {command}"
    if soft < hard:
        fix = f"Raise it, up to its hard limit of {hard} (`ulimit -u {hard}` {where}), and {again}"
    elif hard == resource.RLIM_INFINITY:
        fix = f"Raise it (`ulimit -u unlimited` {where}), and {again}"
    else:
        fix = (
            "It is also the hard limit, which only an administrator or the job's scheduler raises: ask for a higher "
            f"one, or run {command} where the limit is higher"
        )
    said = f"its user (uid {os.getuid()}) may run {soft} processes and threads in all (`ulimit -u`){running}"
    return said, fix


def _task_failure(err: BaseException, threads: Threads) -> NgptConfigError | None:
    """A thread that could not start under `ulimit -u` (`task_limit`): ngpt-export, ngpt-generate, ngpt-evaluate and
    ngpt-prepare ended on a traceback ending in "RuntimeError: can't start new thread", exit 1."""
    if not _thread_failed(err):
        return None
    limit = task_limit(threads.command, "run it again")
    if limit is None:
        return None
    said, fix = limit
    return NgptConfigError(f"this process could not start a thread ({threads.started}): {said}. {fix}")


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


def _raise(limit: int, hard: int, *, root: bool, command: str = PREPARE.command) -> str:
    """How to raise the soft limit `limit`: a user's `ulimit -v` cannot pass the hard limit `hard` (a scheduler's
    memory limit, say; bash's `ulimit -v N` sets both), where the advice to run `ulimit -v unlimited` failed
    ("ulimit: virtual memory: cannot modify limit: Operation not permitted"). root may raise both."""
    if root or hard == resource.RLIM_INFINITY:
        return (
            f"Raise the limit (`ulimit -v unlimited`, or a few GiB more, in the shell or job script before {command})"
        )
    if limit < hard:
        return (
            f"Raise the limit, up to its hard limit of {_size(hard)} (`ulimit -v {hard >> 10}`, in the shell or job "
            f"script before {command})"
        )
    return (
        "It is also the hard limit, which only an administrator or the job's scheduler raises: ask for a higher one "
        f"(the job's virtual memory request), or run {command} where the limit is higher"
    )


def blas_failure(err: KeyboardInterrupt, threads: Threads = PREPARE) -> NgptConfigError | None:
    """The one-line error for the SIGINT OpenBLAS raises when it cannot start its threads at numpy's import (the
    module docstring): `err` raised inside numpy's import, with an address-space limit or a large `ulimit -s` in
    force. None for anything else: Ctrl-C stays 'interrupted'."""
    # numpy's import: module-level code of numpy running (frames named '<module>'). A Ctrl-C that lands in numpy's
    # Python functions (np.vectorize, np.memmap, ...) after its import is a Ctrl-C, and stays 'interrupted'.
    frames = traceback.extract_tb(err.__traceback__)
    if not any(f"{os.sep}numpy{os.sep}" in frame.filename and frame.name == "<module>" for frame in frames):
        return None
    limit, hard = resource.getrlimit(resource.RLIMIT_AS)
    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    big_stack = stack != resource.RLIM_INFINITY and stack >= _BIG_STACK
    under = []
    if limit != resource.RLIM_INFINITY:
        mapped = _mapped()
        held = f", {_size(mapped)} of it mapped already" if mapped is not None else ""
        under.append(f"its address-space limit (`ulimit -v`) of {_size(limit)}{held}")
    if big_stack:
        under.append(f"a stack of `ulimit -s`, {_size(stack)}, for each thread")
    if not under:
        return None
    # Under a large stack OPENBLAS_NUM_THREADS=1 only moves the failure to datasets' first thread (limit_failure).
    fixes = (
        f"Lower `ulimit -s` (8 MiB is the usual; {threads.theirs} map such a stack too)"
        if big_stack
        else "Set OPENBLAS_NUM_THREADS=1 (numpy then starts no thread)"
    ) + f" in the shell or job script before {threads.command}"
    root = os.geteuid() == 0
    fixes += (
        f". Or: {_raise(limit, hard, root=root, command=threads.command)}" if limit != resource.RLIM_INFINITY else ""
    )
    return NgptConfigError(
        "this process could not start numpy's OpenBLAS threads at numpy's import (the 'pthread_create failed' lines "
        f"above; OpenBLAS then raises SIGINT, read as Ctrl-C) under {' and '.join(under)}. {fixes}"
    )


@contextlib.contextmanager
def limit_named(threads: Threads = PREPARE) -> Iterator[None]:
    """Turn what limit_failure and blas_failure name into their one-line NgptConfigError (exit status 2 at the
    command line). Also a decorator of a command's body: `run(limit_named(EXPORT)(lambda: _export(args)), args)`."""
    try:
        yield
    except (RuntimeError, ImportError) as err:
        failure = limit_failure(err, threads)
        if failure is None:
            raise
        raise failure from None
    except KeyboardInterrupt as err:
        failure = blas_failure(err, threads)
        if failure is None:
            raise
        raise failure from None
