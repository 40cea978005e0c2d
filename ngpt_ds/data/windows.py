"""Number the training windows of one split and read them from memory-mapped shards."""

from __future__ import annotations

import numpy as np

from ngpt_ds.data.shards import DatasetMeta
from ngpt_ds.errors import NgptConfigError


class DeferredFaults:
    """The first bad read of a rank whose trainer reports it to every rank at once instead of raising.

    Raised on one data-parallel rank mid-run (a shard damaged after startup, a node-local copy damaged
    where only that rank reads), the error stopped that rank alone: the others died in gloo with
    'Connection closed by peer' inside DeepSpeed's gradient all-reduce, or on NCCL waited out
    train.dist_timeout_s. The trainer instead carries a flag in the all-reduce each step already does
    (ngpt_ds/train/loop.py) and every rank stops with this message."""

    def __init__(self) -> None:
        self.first: str | None = None

    def record(self, message: str) -> None:
        if self.first is None:
            self.first = message


class WindowIndex:
    """Windows of seq_len + 1 tokens, stride seq_len, inside each shard of one split.

    Consecutive windows share one token, so every token but a shard's first is a target
    exactly once per epoch. Windows never cross shard boundaries (at most seq_len tokens
    per shard go unused). Every shard that holds a window is mapped read-only (np.memmap) here, when the
    index is made: mapped on first read, a shard replaced meanwhile (`prepare_data.py --overwrite` of the
    folder while a run trains on it) was read from the new file under the old metadata, silently other
    tokens or a ValueError mid-run; a mapping keeps the file it was made from. Every id read
    is checked to be < the dataset's vocab_size: a bad id raises, or with `faults` is recorded there and
    read as id 0, a valid one, so that the batch can go through the step's collectives with the other
    ranks' before every rank stops (its loss and update are never saved).
    """

    def __init__(self, meta: DatasetMeta, split: str, seq_len: int, faults: DeferredFaults | None = None):
        if split not in meta.splits:
            raise NgptConfigError(
                f"dataset {meta.data_dir} has no {split!r} split (it has {', '.join(meta.splits)}); "
                + (
                    "re-prepare it with --val-fraction > 0 to get a validation split"
                    if split == "validation"
                    else "use one of those splits"
                )
            )
        self.meta = meta
        self.split = split
        self.seq_len = seq_len
        self.faults = faults
        self._shards = meta.splits[split].shards
        counts = [max(0, (s.tokens - 1) // seq_len) for s in self._shards]
        self._first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.num_windows = int(self._first[-1])
        # Mappings hold no file descriptor; shards too short for a window (never read) are not mapped.
        self._maps: list[np.memmap | None] = [
            np.memmap(meta.shard_path(shard), dtype=meta.np_dtype, mode="r", shape=(shard.tokens,)) if count else None
            for shard, count in zip(self._shards, counts)
        ]

    def _map(self, i: int) -> np.memmap:
        mapped = self._maps[i]
        assert mapped is not None, "a shard without windows is never read"
        return mapped

    def read(self, window_ids: np.ndarray) -> np.ndarray:
        """Tokens of the given windows: [len(window_ids), seq_len + 1] int64."""
        window_ids = np.asarray(window_ids, dtype=np.int64)
        shard_of = np.searchsorted(self._first, window_ids, side="right") - 1
        out = np.empty((len(window_ids), self.seq_len + 1), dtype=np.int64)
        for row, (w, s) in enumerate(zip(window_ids, shard_of)):
            start = int(w - self._first[s]) * self.seq_len
            out[row] = self._map(int(s))[start : start + self.seq_len + 1]
        if out.size and int(out.max()) >= self.meta.vocab_size:
            error = self._out_of_vocab(out, window_ids, shard_of)
            if self.faults is None:
                raise error
            self.faults.record(str(error))
            out[out >= self.meta.vocab_size] = 0
        return out

    def _out_of_vocab(self, out: np.ndarray, window_ids: np.ndarray, shard_of: np.ndarray) -> NgptConfigError:
        """The error for a token id the model has no row for. Passed on, it raised an IndexError deep in the
        embedding (a device-side assert on a GPU), and under tensor parallelism, where each rank masks the
        ids outside its vocabulary slice, it became a zero embedding and a zero target logit: silently
        wrong training. One max() per batch; meta.json's checks see sizes, not values."""
        row, col = (int(i) for i in np.argwhere(out >= self.meta.vocab_size)[0])
        shard = self._shards[int(shard_of[row])]
        position = int(window_ids[row] - self._first[shard_of[row]]) * self.seq_len + col
        return NgptConfigError(
            f"dataset {self.meta.data_dir}: shard {shard.file} holds token id {int(out[row, col])} at token "
            f"{position}, but the vocabulary has {self.meta.vocab_size} ids (meta.json vocab_size): the shard is "
            f"corrupt or was not written with this dataset's tokenizer; delete {self.meta.data_dir} and "
            "prepare it again"
        )
