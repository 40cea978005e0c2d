"""Rank-aware logging for ngpt_ds: one readable stream from a multi-rank run.

Every module logs through `get(__name__)` (loggers under "ngpt_ds"); `setup` decides what shows:

- by default only rank 0 logs (at --log-level, INFO unless set); the other ranks report
  errors only, so N ranks do not print every line N times;
- with all_ranks (--log-all-ranks) every rank logs at the level, each line prefixed with
  `[rank N]` so the ranks' lines can be told apart.

Rank 0's lines carry no prefix, so a single-process run reads as before. Warnings and errors go
to stderr; INFO lines go to stdout for the trainer (what it is doing, as it has always printed
it) and to stderr for the commands whose stdout is their result (a dataset path, generated
text, a table): `setup(info_stream=...)`. Lines are written in tqdm's external write mode, so a progress bar on
screen is never torn (the trainer's progress line itself is a tqdm bar, not a log record), and whole (`write`: a
slow reader of a non-blocking pipe is waited for). The rank is looked up for every record
(the process group's rank once it exists, else RANK, which every supported launcher sets and
ngpt_ds.distributed exports), so logging can be set up before the rank is known.
"""

from __future__ import annotations

import logging
import os
import select
import sys
from collections.abc import Callable
from typing import TextIO

ROOT = "ngpt_ds"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def rank() -> int:
    """This process's global rank: the process group's, else $RANK, else 0. (torch is not imported
    for this: a command that never loads it, like ngpt-prepare, stays quick to start.)"""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


NODE_WARNING = {"node_warning": True}
"""`extra` of a record that the first rank of each node logs about that node (its memory): let through on that rank
too, with a [rank N] prefix, since rank 0's node is not the one it is about."""


class _RankFilter(logging.Filter):
    """Rank 0 only (other ranks: errors and NODE_WARNING records), or every rank with a [rank N] prefix."""

    def __init__(self, all_ranks: bool) -> None:
        super().__init__()
        self.all_ranks = all_ranks

    def filter(self, record: logging.LogRecord) -> bool:
        r = rank()
        node_warning = getattr(record, "node_warning", False)
        if not self.all_ranks and r != 0 and record.levelno < logging.ERROR and not node_warning:
            return False
        record.rank_prefix = f"[rank {r}] " if self.all_ranks or (node_warning and r != 0) else ""
        return True


class _TqdmHandler(logging.Handler):
    """INFO and below to `info_stream`, warnings and errors to stderr, through tqdm.write so that a
    progress bar on screen stays intact. The streams are looked up per record (pytest's capture
    and redirections replace them)."""

    def __init__(self, info_stream: str) -> None:
        super().__init__()
        self.info_stream = info_stream

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else getattr(sys, self.info_stream)
        try:
            from tqdm import tqdm

            with tqdm.external_write_mode(file=stream):  # tqdm.write's bar clearing, with a write that is whole
                write(stream, self.format(record) + "\n")
        except BrokenPipeError:
            _discard_from_now_on(stream)
        except OSError as err:  # a redirection to a full disk (Slurm's output file), an I/O error
            _discard_from_now_on(stream)
            if stream is not sys.stderr:
                reason = os.strerror(err.errno) if err.errno else str(err)
                _say_on_stderr(
                    f"warning: the log lines to {self.info_stream} cannot be written ({reason}) and are discarded "
                    "from now on; the run goes on, and metrics.jsonl and TensorBoard keep its records"
                )
        except Exception:  # logging must never break the program
            self.handleError(record)


def write(stream: TextIO, text: str) -> None:
    """Write `text` to `stream` whole and flush it, waiting while the reader of a non-blocking pipe is slow.

    A descriptor set O_NONBLOCK (by whoever shares it: ssh, which pdsh and DeepSpeed's multinode runner use,
    sets it on the stdout and stderr it is given) refuses a write while the pipe is full (EAGAIN). Buffered,
    Python raised BlockingIOError, taken as a dead stream: the log went to /dev/null for good after ~64 KiB.
    Unbuffered (`python -u`, as the launchers start ranks), the text layer ignored the refusal and lines were
    lost without a word, or cut. Here the bytes go to the binary layer, and a refusal waits until the pipe
    can take more, as a blocking write would. Errors other than EAGAIN (a reader gone, a full disk) raise."""
    try:
        fd, raw = stream.fileno(), stream.buffer  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):  # a StringIO, pytest's capture: no descriptor to wait on
        stream.write(text)
        stream.flush()
        return
    _until_done(fd, stream.flush)  # text still held by the stream (a print() before)
    data = memoryview(text.encode(stream.encoding or "utf-8", stream.errors or "strict"))
    while data:
        try:
            written = raw.write(data)  # a raw FileIO (unbuffered) returns None when the pipe is full
        except BlockingIOError as err:  # a BufferedWriter: what it took is in characters_written
            written = err.characters_written
        if not written:
            _wait_writable(fd)
        data = data[written or 0 :]
    _until_done(fd, raw.flush)


def _until_done(fd: int, flush: Callable[[], object]) -> None:
    """flush(), again after each wait while a non-blocking descriptor is full (a BufferedWriter keeps what
    it could not write)."""
    while True:
        try:
            flush()
            return
        except BlockingIOError:
            _wait_writable(fd)


def _wait_writable(fd: int) -> None:
    select.select([], [fd], [])  # a reader gone also reads as writable: the write then raises BrokenPipeError


def _say_on_stderr(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr on the same full disk, or closed: nothing more to do
        pass


def _discard_from_now_on(stream: TextIO) -> None:
    """The reader of `stream` is gone (`| head`, `| grep -m1`, a tee that was killed), or the file it is
    redirected to cannot be written (a full disk under Slurm's output file): the run goes on, and what
    is written there from now on is discarded (the stream's descriptor now points at /dev/null, as
    Python's documentation of SIGPIPE advises). Before, every later line printed a '--- Logging error
    ---' traceback on stderr, and the command's last print() failed a finished run (exit 1: a stopped
    run was not requeued)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no descriptor (a StringIO, pytest's capture): nothing to do
        pass


def setup(level: str | int = "INFO", *, all_ranks: bool = False, info_stream: str = "stdout") -> None:
    """Configure the "ngpt_ds" loggers for this process (a second call replaces the first).
    info_stream: "stdout" or "stderr", where INFO and DEBUG lines go."""
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = _TqdmHandler(info_stream)
    handler.addFilter(_RankFilter(all_ranks))
    handler.setFormatter(logging.Formatter("%(rank_prefix)s%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.getLevelName(level.upper()) if isinstance(level, str) else level)


def get(name: str) -> logging.Logger:
    """The logger for a module (`get(__name__)`). Used before any `setup` (ngpt_ds called as a library,
    the tests' in-process runs), it sets up the default first: rank 0 at INFO."""
    if not logging.getLogger(ROOT).handlers:
        setup()
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")
