"""Tokenize batches of documents in worker processes, in input order, with bounded memory.

Kept free of heavy imports: each spawned worker imports only this module, numpy and
sentencepiece.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import sentencepiece as spm

Tag = TypeVar("Tag")

_sp: spm.SentencePieceProcessor | None = None


def _init_worker(model_path: str) -> None:
    global _sp
    _sp = spm.SentencePieceProcessor(model_file=model_path)


def encode_documents(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Encode documents, each followed by EOS.

    Returns (ids [sum(lengths)] uint32, lengths [len(texts)] int64), EOS counted in lengths.
    """
    assert _sp is not None, "_init_worker was not called"
    eos = _sp.eos_id()
    # num_threads=1: parallelism comes from the processes; threads here would oversubscribe.
    docs = _sp.encode(texts, num_threads=1)
    lengths = np.fromiter((len(d) + 1 for d in docs), dtype=np.int64, count=len(docs))
    ids = np.fromiter(
        itertools.chain.from_iterable(itertools.chain(d, (eos,)) for d in docs),
        dtype=np.uint32,
        count=int(lengths.sum()),
    )
    return ids, lengths


def encode_in_order(
    batches: Iterable[tuple[Tag, list[str]]], model_path: str, workers: int
) -> Iterator[tuple[Tag, np.ndarray, np.ndarray]]:
    """Yield (tag, ids, lengths) for each (tag, texts) batch, in input order.

    At most 2 * workers batches are in flight, so the corpus is never held in memory
    (Pool.imap would read the whole input ahead). workers == 1 runs in this process.
    """
    if workers == 1:
        _init_worker(model_path)
        for tag, texts in batches:
            yield (tag, *encode_documents(texts))
        return
    # spawn, not fork: the parent holds threads (pyarrow, tokenizers) that fork would copy mid-lock.
    with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(model_path,)) as pool:
        pending: deque = deque()
        for tag, texts in batches:
            pending.append((tag, pool.apply_async(encode_documents, (texts,))))
            if len(pending) >= 2 * workers:
                t, res = pending.popleft()
                yield (t, *res.get())
        while pending:
            t, res = pending.popleft()
            yield (t, *res.get())
