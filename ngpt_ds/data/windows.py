"""Number the training windows of one split and read them from shards held open."""

from __future__ import annotations

import errno
import os
import weakref

import numpy as np

from ngpt_ds import log
from ngpt_ds.data.shards import DatasetMeta
from ngpt_ds.errors import NgptConfigError

_log = log.get(__name__)

UNREAD_WARNING = 0.10
"""The share of a split's tokens left in shard tails (shorter than a window) above which a reader is told."""
_told_unread: set[tuple[str, str, int]] = set()
"""(dataset, split, context) whose unread tails this process has named: the trainer indexes each split twice
(the startup check, then the loader), and said it twice."""


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


def _allow_open_files(shards: int) -> None:
    """Raise this process's soft limit of open files, up to its hard limit, to hold `shards` more open.

    Every shard that holds a window is held open (one file descriptor) for the whole run, and a merged dataset
    has one shard per block of documents in each split (thousands for 10^8 documents): under the usual soft limit of 1024 it
    stopped at startup, though the hard limit (the most a process may raise itself to, often 2^19 or more)
    allowed it, as it allows a `ulimit -n` before the command. Past the hard limit `_open` names it."""
    try:
        import resource
    except ImportError:  # not a POSIX system: nothing to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        held = len(os.listdir("/proc/self/fd"))
    except OSError:
        held = 64
    wanted = held + shards + 256  # headroom for what torch, DeepSpeed and the logs open later
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _open_read_only(path: os.PathLike[str] | str) -> int:
    """A read-only descriptor of `path` (not inherited by child processes)."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))


def _size_and_mtime(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_size, st.st_mtime_ns


def _close_all(fds: list[int | None]) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)
    fds.clear()


def _read_at(fd: int, into: memoryview, offset: int) -> int:
    """Read len(into) bytes of fd at `offset` into `into`, without moving the file position; the bytes read,
    fewer only at the end of the file."""
    done = 0
    while done < len(into):  # one read but at the end of the file (or a signal's interruption)
        if _PREADV:
            got = os.preadv(fd, [into[done:]], offset + done)
        else:
            chunk = os.pread(fd, len(into) - done, offset + done)
            got = len(chunk)
            into[done : done + got] = chunk
        if got == 0:
            break
        done += got
    return done


_PREADV = hasattr(os, "preadv")
"""os.preadv reads into the batch's buffer (Linux, the BSDs); os.pread returns new bytes (macOS before 11)."""


class WindowIndex:
    """Windows of seq_len + 1 tokens, stride seq_len, inside each shard of one split.

    Consecutive windows share one token, so every token but a shard's first is a target
    exactly once per epoch. Windows never cross shard boundaries (at most seq_len tokens
    per shard go unused). Every shard that holds a window is opened read-only here, when the index is made,
    and held open: opened (then mapped) on first read, a shard replaced meanwhile (`prepare_data.py
    --overwrite` of the folder while a run trains on it, which renames new files into place) was read from
    the new file under the old metadata, silently other tokens or an error mid-run; an open descriptor keeps
    the file it was opened on. Windows are read with os.pread(v), not through np.memmap: a shard truncated in
    place (`cp fresh/train_000000.bin data/`, `rsync --inplace`) killed every rank that touched a mapped page
    past its new end with SIGBUS (exit status -7, no word of which file), where a read comes back short; and
    a shard rewritten in place at its size was read silently (other tokens), where fstat now tells its
    modification time changed (`_check_unchanged`, once per read, on the shards it read). Either is an error
    naming the shard (`_rewritten`). Every id read
    is checked to be < the dataset's vocab_size: a bad id raises, or with `faults` is recorded there and
    read as id 0, a valid one, so that the batch can go through the step's collectives with the other
    ranks' before every rank stops (its loss and update are never saved). `needed_windows` is the fewest
    windows the caller can use: below it the caller refuses the split, and the unread-tails warning, which
    came first and pushed that refusal off a user's last line, is left out.
    """

    def __init__(
        self,
        meta: DatasetMeta,
        split: str,
        seq_len: int,
        faults: DeferredFaults | None = None,
        needed_windows: int = 1,
    ):
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
        if self.num_windows >= needed_windows:  # else the caller refuses the split, and that line stands alone
            self._warn_unread_tails(counts)
        self._itemsize = int(self.meta.np_dtype.itemsize)
        self._window_bytes = (seq_len + 1) * self._itemsize
        # Shards too short for a window (never read) are not opened. (size, st_mtime_ns) of each when opened.
        _allow_open_files(sum(1 for count in counts if count))
        self._fds: list[int | None] = []
        self._opened: list[tuple[int, int] | None] = []
        self._gone: set[int] = set()  # shards named as deleted since they were opened (`_check_unchanged`)
        self._closer = weakref.finalize(self, _close_all, self._fds)  # the descriptors go with the index
        for i, count in enumerate(counts):
            if not count:
                self._fds.append(None)
                self._opened.append(None)
                continue
            fd = self._open(i)
            self._fds.append(fd)
            size, mtime_ns = _size_and_mtime(fd)
            self._opened.append((size, mtime_ns))
            if size < self._shards[i].tokens * self._itemsize:  # cut short since meta.json's sizes were checked
                raise self._rewritten(i, size)

    def _warn_unread_tails(self, counts: list[int]) -> None:
        """A window never crosses a shard, so each shard's last tokens short of a window are never read: with
        shards barely longer than the context (--shard-tokens 1500 at context 1024, or a merged dataset's
        per-block shards) a third of the data went unused without a word."""
        total = sum(s.tokens for s in self._shards)
        unread = total - sum(count * self.seq_len + 1 for count in counts if count)
        told = (str(self.meta.data_dir), self.split, self.seq_len)
        if total and unread > UNREAD_WARNING * total and told not in _told_unread:
            _told_unread.add(told)
            _log.warning(
                f"warning: dataset {self.meta.data_dir} split {self.split!r}: {unread / total:.0%} of its {total} "
                f"tokens are never read at context {self.seq_len}, since a window never crosses a shard and its "
                f"{len(self._shards)} shards hold {total // len(self._shards)} tokens on average; prepare it again "
                f"with --shard-tokens well above {self.seq_len} (a dataset merged from parts: more documents per "
                "block, --shard-block-docs) to use them"
            )

    def _open(self, i: int) -> int:
        """Open shard i read-only; its descriptor. Each one held counts against `ulimit -n`: opened on first
        read, shard ~1000 of a large dataset stopped a run hours in with an OSError traceback ('Too many open
        files' under `ulimit -n 1024`); now it is one line at startup, naming the limit."""
        shard = self._shards[i]
        try:
            return _open_read_only(self.meta.shard_path(shard))
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            with_windows = sum(1 for s in self._shards if (s.tokens - 1) // self.seq_len > 0)
            opened = sum(1 for s in self._shards[:i] if (s.tokens - 1) // self.seq_len > 0)  # short ones are not
            raise NgptConfigError(
                f"dataset {self.meta.data_dir} split {self.split!r}: opening shard {shard.file} failed "
                f"({e.strerror}) after {opened} of the {with_windows} shards that hold windows: every shard is held "
                f"open while the run reads it, so this process needs more than {with_windows} of `ulimit -n` "
                "(open files); raise that limit, or prepare the dataset with fewer, larger shards (--shard-tokens)"
            ) from None

    def _fd(self, i: int) -> int:
        fd = self._fds[i]
        assert fd is not None, "a shard without windows is never read"
        return fd

    def _rewritten(self, i: int, size: int | None) -> NgptConfigError:
        """The error for shard i found shorter than meta.json says (`size` bytes), or with `size` None changed
        since it was opened (its modification time)."""
        shard = self._shards[i]
        expected = shard.tokens * self._itemsize
        seen = (
            "its modification time changed since the run opened it"
            if size is None
            else f"it holds {size} of its {expected} bytes now"
        )
        return NgptConfigError(
            f"dataset {self.meta.data_dir}: shard {shard.file} was truncated or rewritten in place while the run "
            f"read it ({seen}): replace dataset files by renaming a complete copy into place, never by copying "
            "over them"
        )

    def _unreadable(self, i: int, err: OSError) -> NgptConfigError:
        """The error for shard i whose read failed after it was opened and checked (a disk error, a network
        filesystem's stale handle once the file was deleted on another node, a permission taken away on a server
        that checks it at each read). Raised bare on one rank, it was a traceback there and, on the others,
        'Connection closed by peer' in the step's all-reduce (on NCCL: train.dist_timeout_s of waiting)."""
        return NgptConfigError(
            f"dataset {self.meta.data_dir}: reading shard {self._shards[i].file} failed ({type(err).__name__}: "
            f"{err}) after the run opened it: the file became unreadable (a disk or network filesystem error, the "
            "file deleted on another node, its permission taken away); check that file on this node, copy the "
            "dataset again if it is damaged (`ngpt-prepare --verify DIR` reads every block), then resume"
        )

    def _check_unchanged(self, shards: set[int]) -> int | None:
        """The first of `shards` whose size or modification time differs from when it was opened, if any: one
        fstat each, after their windows were read, so that a rewrite that changed what was read is seen. A shard
        whose file has no name left (deleted, or replaced by a rename) is read on from its descriptor, the same
        tokens, and named once (`_gone`)."""
        for s in sorted(shards):
            st = os.fstat(self._fd(s))
            if (st.st_size, st.st_mtime_ns) != self._opened[s]:
                return s
            if st.st_nlink == 0 and s not in self._gone:
                self._gone.add(s)
                # Not an error: this run reads the tokens it opened. Silent, the week-long run found out only at
                # its resume, which opens the folder as it is then (a shard missing, or other training data).
                _log.warning(
                    f"dataset {self.meta.data_dir}: shard {self._shards[s].file} was deleted or replaced since the "
                    "run opened it; the run goes on reading the file it opened, but a resume reads the folder as it "
                    "is then and refuses it unless the same dataset is back in place: put it back before this job "
                    "ends"
                )
        return None

    def read(self, window_ids: np.ndarray) -> np.ndarray:
        """Tokens of the given windows: [len(window_ids), seq_len + 1] int64."""
        window_ids = np.asarray(window_ids, dtype=np.int64)
        shard_of = np.searchsorted(self._first, window_ids, side="right") - 1
        offsets = ((window_ids - self._first[shard_of]) * (self.seq_len * self._itemsize)).tolist()
        shards = shard_of.tolist()
        tokens = np.empty((len(window_ids), self.seq_len + 1), dtype=self.meta.np_dtype)
        raw, size = tokens.data.cast("B"), self._window_bytes
        short: tuple[int, int] | None = None  # (shard, its size) of the first window read short
        failed: tuple[int, OSError] | None = None  # (shard, the error) of the first read that failed
        for row, (s, offset) in enumerate(zip(shards, offsets)):
            into = raw[row * size : (row + 1) * size]
            try:
                got = _read_at(self._fd(s), into, offset)
                if got < size:  # past the end of the shard: the rest of the row is id 0, a valid one
                    into[got:] = bytes(size - got)
                    short = short or (s, os.fstat(self._fd(s)).st_size)
            except OSError as e:  # gone bad since it was opened: a row of id 0, as a short read's
                into[:] = bytes(size)
                failed = failed or (s, e)
        error: NgptConfigError | None = None
        if failed is not None:
            error = self._unreadable(*failed)
        elif (changed := short[0] if short else self._check_unchanged(set(shards))) is not None:
            error = self._rewritten(changed, short[1] if short else None)
        if error is not None:
            if self.faults is None:
                raise error
            self.faults.record(str(error))
        out = tokens.astype(np.int64)
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
