"""Tokenize batches of documents in worker processes, in input order, with bounded memory.

Kept free of heavy imports: each spawned worker imports only this module, numpy and
sentencepiece (and ngpt_ds.errors and ngpt_ds.limits, which import the standard library alone).

A document longer than MAX_DOC_CHARS is encoded in chunks: sentencepiece holds about 226 bytes per
token while it encodes, so one 2 GB single-line document needed about 100 GB in one worker. Cuts
are chosen where they provably change no id for the tokenizers `ngpt_ds.data.tokenizer` trains
(BPE, identity normalization, whitespace kept, a dummy "▁" prefix, no piece with "▁" after its first
character, none holding a newline), checked per model by `cut_rules`:

- at a space, which is dropped: the next chunk's dummy prefix stands for it. No piece spans the "▁"
  that starts a word (BPE merges two symbols only into a piece, and no piece has "▁" inside it), so
  the pieces on either side are those of the whole document; inside a run of spaces each space is a
  one-"▁" word of its own, so any space of the run will do;
- at a newline, kept at the start of the next chunk: no piece holds a newline, so nothing merges
  across it, and the next chunk's dummy prefix encodes to the ids of a lone "▁", which are dropped.
  The newline must not be <unk> (a model without byte fallback): sentencepiece merges a run of
  unknown characters into one <unk>, across a cut too.

A unigram model decodes with float32 sums over the whole text, so the whole document's ids already
depend on where a word stands (near-ties flip thousands of tokens in); its chunks may differ from it
there. A model trained otherwise (a --tokenizer that collapses spaces, normalizes, or has pieces across
"▁" or newlines) is cut at spaces only, kept in the next chunk where it has no dummy prefix, and its
ids at a cut are not proven equal. A chunk with no space or newline in MAX_DOC_CHARS characters is
cut hard: there the ids may differ (the second part gets a "▁" prefix the document does not have).
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from typing import Any, TypeVar

import numpy as np
import sentencepiece as spm

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.limits import PREPARE_WORKERS, Threads, limit_failure, limit_in_force

Tag = TypeVar("Tag")

MAX_DOC_CHARS = 1 << 20
"""Documents longer than this many characters are encoded in chunks of at most this many."""

_sp: spm.SentencePieceProcessor | None = None
_rules: CutRules | None = None
_init_error: str | None = None
"""Why this worker process could not load the tokenizer (`_init_pool_worker`); raised by `_worker_ready`."""

PARENT_WATCH_S = 1.0
"""How often a pool's worker checks that the process that started it is alive."""

ALL_STARTED_WAIT_S = 300.0
"""How long a new pool worker waits for the others to start (`encode_in_order`)."""


@dataclass(frozen=True)
class CutRules:
    """How a model's long documents are cut (module docstring)."""

    drop_space: bool
    """A cut space is dropped (the model adds a dummy "▁" prefix), else kept at the next chunk's start."""
    newline_lead: list[int] | None
    """The ids of the dummy prefix to drop from a chunk that starts with a newline; None: no newline cuts."""


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a serialized protobuf message: varints as ints, length-delimited as bytes."""
    pos = 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = buf[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while pos < len(buf):
        key = varint()
        wire = key & 7
        if wire == 0:
            yield key >> 3, varint()
        elif wire == 2:
            size = varint()
            yield key >> 3, buf[pos : pos + size]
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            return


def cut_rules(sp: spm.SentencePieceProcessor) -> CutRules:
    """Read the model's normalizer and pieces (sentencepiece_model.proto field numbers) for `CutRules`."""
    top = dict(_fields(sp.serialized_model_proto()))
    norm, trainer = ({} if not isinstance(m := top.get(n), bytes) else dict(_fields(m)) for n in (3, 2))
    dummy = bool(norm.get(3, 1))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    exact = (
        norm.get(1) == b"identity"
        and not norm.get(2)  # no precompiled character map
        and not norm.get(4, 1)  # remove_extra_whitespaces off
        and bool(norm.get(5, 1))  # spaces become "▁"
        and not trainer.get(24, 0)  # treat_whitespace_as_suffix off
        and dummy
        and not any("▁" in p[1:] or ("\n" in p and p != "\n") for p in pieces)
    )
    lead = sp.encode(" ")  # two lone "▁": the dummy prefix and the space
    half = len(lead) // 2
    newline = sp.encode("\n")
    # A newline that is <unk> (no byte fallback) merges with unknown neighbours into one <unk>: no newline cuts.
    ok = exact and len(lead) % 2 == 0 and lead[:half] == lead[half:] and newline[:half] == lead[:half]
    ok = ok and sp.unk_id() not in newline
    return CutRules(drop_space=dummy, newline_lead=lead[:half] if ok else None)


def _init_worker(model_path: str) -> None:
    global _sp, _rules
    _sp = spm.SentencePieceProcessor(model_file=model_path)
    _rules = cut_rules(_sp)


def _init_pool_worker(model_path: str, all_started: Barrier, parent_pid: int) -> None:
    """`_init_worker` in a pool's worker process. Its error is kept and raised by `_worker_ready`, so that it
    reaches the parent as that task's result; raised here, it broke the pool at once with a traceback per
    worker, and multiprocessing.Pool, used before, started new workers that failed the same way forever.

    Then it waits until every worker process has started (`encode_in_order` explains why), and watches the
    parent: a worker of a parent killed outright (SIGKILL, the out-of-memory killer) waited on the task queue
    forever, holding its memory."""
    global _init_error
    try:
        _init_worker(model_path)
    except Exception as err:  # noqa: BLE001 (any error: the parent names it)
        _init_error = f"tokenizer {model_path}: the worker processes could not load it ({type(err).__name__}: {err})"
    try:  # in the try: its RuntimeError raised here broke the pool with a traceback per worker
        threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    except RuntimeError as err:
        failure = limit_failure(err, WORKER_WATCH)
        _init_error = _init_error or (_in_a_worker(failure) if failure is not None else f"{type(err).__name__}: {err}")
    try:
        all_started.wait(timeout=ALL_STARTED_WAIT_S)
    except threading.BrokenBarrierError:  # a Python whose executor starts workers otherwise: go on without
        pass


def _exit_with_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_WATCH_S)
    os._exit(1)


def _worker_ready() -> None:
    """The pool's first task for each worker: raises the worker's `_init_pool_worker` error, if any."""
    if _init_error is not None:
        raise NgptConfigError(_init_error)


def chunks(text: str, max_chars: int, rules: CutRules) -> Iterator[tuple[str, str]]:
    """(chunk, cut) pieces of `text` of at most max_chars characters (module docstring); cut: how the chunk
    was cut from the one before ("" for the first, "space", "newline" or "hard"). After a "space" cut with
    rules.drop_space the space is in neither chunk; after a "newline" cut the chunk starts with it."""
    start, end, cut = 0, len(text), ""
    while end - start > max_chars:
        # A cut at p needs text before it in this chunk and text after it: an empty chunk encodes to no ids
        # at all, not to the dummy prefix the whole document has there.
        stop = min(start + max_chars + 1, end - 1)
        space = text.rfind(" ", start + 1, stop)
        newline = text.rfind("\n", start + 1, stop) if rules.newline_lead is not None else -1
        if newline > space:
            yield text[start:newline], cut
            start, cut = newline, "newline"
        elif space > 0:
            yield text[start:space], cut
            start, cut = (space + 1 if rules.drop_space else space), "space"
        else:  # no whitespace at all
            yield text[start : start + max_chars], cut
            start, cut = start + max_chars, "hard"
    yield text[start:], cut


def _encode_long(text: str, max_chars: int) -> np.ndarray:
    """The ids of one long document, encoded chunk by chunk into one array (no EOS)."""
    assert _sp is not None and _rules is not None, "_init_worker was not called"
    lead = len(_rules.newline_lead or ())
    parts = []
    for chunk, cut in chunks(text, max_chars, _rules):
        ids = _sp.encode(chunk)
        parts.append(np.array(ids[lead:] if cut == "newline" else ids, dtype=np.uint32))
    return np.concatenate(parts)


def encode_documents(texts: list[str], max_chars: int = MAX_DOC_CHARS) -> tuple[np.ndarray, np.ndarray]:
    """Encode documents, each followed by EOS; one longer than max_chars in chunks (module docstring).

    Returns (ids [sum(lengths)] uint32, lengths [len(texts)] int64), EOS counted in lengths.
    """
    if _init_error is not None:
        raise NgptConfigError(_init_error)
    assert _sp is not None, "_init_worker was not called"
    eos = np.array([_sp.eos_id()], dtype=np.uint32)
    parts: list[np.ndarray] = []
    lengths = np.empty(len(texts), dtype=np.int64)
    i = 0
    while i < len(texts):
        j = i
        while j < len(texts) and len(texts[j]) <= max_chars:
            j += 1
        if j > i:  # a run of ordinary documents: one call
            # num_threads=1: parallelism comes from the processes; threads here would oversubscribe.
            docs = _sp.encode(texts[i:j], num_threads=1)
            lengths[i:j] = [len(d) + 1 for d in docs]
            count = int(lengths[i:j].sum())
            chained = itertools.chain.from_iterable(itertools.chain(d, eos) for d in docs)
            parts.append(np.fromiter(chained, dtype=np.uint32, count=count))
        if j < len(texts):
            ids = _encode_long(texts[j], max_chars)
            lengths[j] = ids.size + 1
            parts += [ids, eos]
        i = j + 1
    return (np.concatenate(parts) if parts else np.empty(0, dtype=np.uint32)), lengths


def encode_in_order(
    batches: Iterable[tuple[Tag, list[str]]], model_path: str, workers: int, max_chars: int = MAX_DOC_CHARS
) -> Iterator[tuple[Tag, np.ndarray, np.ndarray]]:
    """Yield (tag, ids, lengths) for each (tag, texts) batch, in input order.

    At most 2 * workers batches are in flight, so the corpus is never held in memory
    (Pool.imap would read the whole input ahead). workers == 1 runs in this process.
    """
    if workers == 1:
        _init_worker(model_path)
        for tag, texts in batches:
            yield (tag, *encode_documents(texts, max_chars))
        return
    _pool_threads_start()
    # spawn, not fork: the parent holds threads (pyarrow, tokenizers) that fork would copy mid-lock.
    # concurrent.futures, not multiprocessing.Pool: a Pool whose worker is killed (the out-of-memory killer, a
    # crash in sentencepiece) starts another and never answers the lost task, so the preparation waited forever.
    context = mp.get_context("spawn")
    # Every worker is started before the first batch, and none later. The executor starts a worker on a submit
    # when none is idle; one started by a submit racing the executor's own handling of a killed worker was
    # missed by its termination and then waited for forever (CPython 3.11: the preparation hung). The workers
    # wait for one another in `_init_pool_worker`, so that none is idle before all `workers` submits below
    # have started one each.
    all_started = context.Barrier(workers)
    before = set(mp.active_children())
    with (
        ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_pool_worker, initargs=(model_path, all_started, os.getpid())
        ) as pool,
        _manager_thread_limit(pool) as limited,
    ):
        pending: deque = deque()
        try:
            for ready in [_submit(pool, _worker_ready) for _ in range(workers)]:
                _result(pool, ready, limited)
            for tag, texts in batches:
                pending.append((tag, _submit(pool, encode_documents, texts, max_chars)))
                if len(pending) >= 2 * workers:
                    t, future = pending.popleft()
                    yield (t, *_result(pool, future, limited))
            while pending:
                t, future = pending.popleft()
                yield (t, *_result(pool, future, limited))
        except _PoolThreadLost as lost:
            # The workers wait on a task queue that nothing feeds: ended here, else the interpreter's exit waits
            # for them (multiprocessing joins its children). shutdown(wait=False) first: the `with`'s shutdown
            # would join a manager thread that never started ("cannot join thread before it is started").
            for child in set(mp.active_children()) - before:
                child.terminate()
                child.join()
            pool.shutdown(wait=False, cancel_futures=True)
            raise _lost_thread_error(lost) from None
        except BrokenProcessPool:
            raise NgptConfigError(
                f"a tokenizer worker process ended abruptly (killed: by the out-of-memory killer, say, which the "
                f"kernel log names; or a crash in sentencepiece on {model_path}). Run the preparation again, with "
                "fewer --workers where memory is short"
            ) from None


def _submit(pool: ProcessPoolExecutor, fn: Callable, *args) -> Future:
    """pool.submit(fn, *args). A submit may start a worker, and starting one in a pool that a killed worker has
    just broken, before the pool noticed, failed with "ValueError: bad value(s) in fds_to_keep" (its pipes
    closed meanwhile): that is the broken pool too, as is a start that fails for want of memory. The first submit
    also starts the pool's manager thread in this process, after its workers: a RuntimeError."""
    try:
        return pool.submit(fn, *args)
    except (OSError, ValueError) as err:
        raise BrokenProcessPool(f"starting a worker process failed: {err}") from err
    except RuntimeError as err:
        raise _PoolThreadLost(err) from err


class _PoolThreadLost(Exception):
    """The pool's manager thread in this process could not start (`_submit`: its RuntimeError is the argument), or
    ended with tasks unanswered (`_result`: the RuntimeError it ended on where a limit's, kept by
    `_manager_thread_limit`; else no argument, its traceback printed by the thread)."""


POOL_THREADS = 2
"""The threads a ProcessPoolExecutor starts in this process: its manager, and its task queue's feeder (started by
the manager at its first task)."""


def _pool_threads_start() -> None:
    """Start POOL_THREADS threads at once, and end them, before a pool starts its own: where a low `ulimit -v` or a
    large `ulimit -s` leaves no room for them, the one-line error (ngpt_ds.limits), before any worker is spawned.

    In the pool the manager thread that could not start was a traceback of 69 lines (its RuntimeError, then "cannot
    join thread before it is started" from the executor's shutdown, then each worker's own, exit status 1), and a
    feeder thread that could not start ended the manager thread alone: the preparation then waited forever for its
    workers' first answer."""
    release = threading.Event()
    threads = [threading.Thread(target=release.wait, daemon=True) for _ in range(POOL_THREADS)]
    try:
        for thread in threads:
            thread.start()
    except RuntimeError as err:
        failure = limit_failure(err, PREPARE_WORKERS)
        if failure is None:
            raise
        raise _with_one_process(failure) from None
    finally:
        release.set()
        for thread in threads:
            if thread.ident is not None:  # started
                thread.join()


WORKER_WATCH = Threads(
    "ngpt-prepare", "each --workers process watches ngpt-prepare's own process with a thread", "the workers' threads"
)
"""The thread each pool worker starts (`_exit_with_parent`), for the limit's line where it cannot start."""


def _in_a_worker(failure: NgptConfigError) -> str:
    """The limit's line for a worker process's thread that could not start: said by the worker, about itself."""
    text = str(failure).replace("this process could not start a thread", "a worker process could not start a thread", 1)
    return str(_with_one_process(NgptConfigError(text)))


def _with_one_process(failure: NgptConfigError) -> NgptConfigError:
    return NgptConfigError(
        f"{failure}; or run with --workers 1, which starts no worker process and none of its threads"
    )


@contextlib.contextmanager
def _manager_thread_limit(pool: ProcessPoolExecutor) -> Iterator[list[RuntimeError]]:
    """While the pool runs: the error the pool's manager thread ended on, where it is a thread that could not start
    under a limit (ngpt_ds.limits: its feeder, under a low `ulimit -v`), kept for the line (`_result`) instead of
    printed. Its traceback had been printed above the line, which said 'its traceback is above'. Any other error of
    that thread, and every other thread's, is printed as before."""
    kept: list[RuntimeError] = []
    previous = threading.excepthook

    def hook(args: Any) -> None:
        value = args.exc_value
        manager = getattr(pool, "_executor_manager_thread", None)  # CPython's executor (3.9 and later), as `_result`
        if (
            manager is not None
            and args.thread is manager
            and isinstance(value, RuntimeError)
            and limit_failure(value, PREPARE_WORKERS) is not None
        ):
            kept.append(value)
            return
        previous(args)

    threading.excepthook = hook
    try:
        yield kept
    finally:
        if threading.excepthook is hook:
            threading.excepthook = previous


def _result(pool: ProcessPoolExecutor, future: Future, limited: list[RuntimeError] | None = None) -> Any:
    """future.result(), or _PoolThreadLost where the pool's manager thread has ended with `future` unanswered: a
    thread it starts could not start, and nothing would ever answer. `limited`: that thread's error, where a limit's
    (`_manager_thread_limit`); else its traceback is printed."""
    while True:
        try:
            return future.result(timeout=PARENT_WATCH_S)
        except FutureTimeout:
            pass
        # CPython's executor (3.9 and later) holds its manager thread here; it sets every pending future's
        # exception (BrokenProcessPool) before it ends on a broken pool, so a future not done is never answered.
        manager = getattr(pool, "_executor_manager_thread", None)
        if manager is not None and not manager.is_alive() and not future.done():
            raise _PoolThreadLost(*(limited or [])[:1])


def _lost_thread_error(lost: _PoolThreadLost) -> Exception:
    """The error for the pool's lost thread: the one line of ngpt_ds.limits where its RuntimeError is a limit's."""
    cause = lost.args[0] if lost.args else None
    if isinstance(cause, RuntimeError):
        failure = limit_failure(cause, PREPARE_WORKERS)
        return _with_one_process(failure) if failure is not None else cause
    return NgptConfigError(
        "the pool of worker processes lost its thread in this process (its traceback is above), and its workers "
        f"were stopped{limit_in_force()}. Run the preparation again, or with --workers 1 (no pool)"
    )
