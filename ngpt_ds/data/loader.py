"""Batches of (input, target) token windows for data-parallel training and validation.

Order: epoch e visits all windows of the split in the permutation drawn from
np.random.default_rng([seed, e]). Micro-batch b of an epoch is permutation slots
[b*G, (b+1)*G) with G = dp_size * micro_batch_size; data-parallel rank r takes the r-th
micro_batch_size of them. So ranks see disjoint windows, the order depends only on
(seed, epoch), and the position is one integer: windows consumed, over all ranks.
Tensor-/pipeline-parallel ranks of one replica pass the same dp_rank and get the same batch.
Each epoch ends on a whole optimizer step: its last W mod S windows are skipped (a different
set each epoch), S = G * grad_accum = the global batch.

So optimizer step k trains on slots [k*S, (k+1)*S) of the epoch's permutation whatever the split of
S into data-parallel ranks, micro-batches and accumulation steps: a run resumed at another
data-parallel size with the same global batch sees exactly the windows the original run would have.

The position is the number of slots of the epoch consumed, p, which a resume with another global batch
S' (another micro-batch, accumulation or data-parallel size) need not divide: its steps take slots
[p + k*S', p + (k+1)*S') while they fit in the epoch, and the epoch ends at the first step that would not
(a position with no whole step left starts the next epoch at once). Later epochs start at slot 0 as
always. So no window is read twice in an epoch, no step mixes two epochs, and a resume at an unchanged
batch reads the same stream as before (p is then a multiple of S). Checkpoints hold the position
between steps; ngpt_ds versions that required p to be a whole number of the new micro-batches over
all ranks wrote the same state.
All of this needs every rank to read the same dataset: under a started process group the training
loader compares meta.json across the ranks first.

The state also records the validation split's fingerprint (ngpt_ds.data.fingerprint). A resume on a dataset whose
validation shards were replaced since the save (another held-out set, a re-prepared copy with the same train
split) went on without a word, and its validation losses were read as comparable with those before; it now says so
in a warning. Not refused: the training data, which the resume depends on, is the same.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ngpt_ds import log
from ngpt_ds.data.fingerprint import split_fingerprint
from ngpt_ds.data.shards import DatasetMeta, load_dataset_meta
from ngpt_ds.data.windows import DeferredFaults, WindowIndex
from ngpt_ds.errors import NgptConfigError, Problems

_log = log.get(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]
_STATE_VERSION = 1


def _check_layout(subject: str, seq_len: int, micro_batch_size: int, dp_rank: int, dp_size: int) -> None:
    p = Problems(subject)
    p.check(seq_len >= 1, "seq_len", seq_len, "must be a positive integer")
    p.check(micro_batch_size >= 1, "micro_batch_size", micro_batch_size, "must be a positive integer")
    p.check(dp_size >= 1, "dp_size", dp_size, "must be a positive integer")
    p.check(0 <= dp_rank < max(dp_size, 1), "dp_rank", dp_rank, f"must be in [0, dp_size={dp_size})")
    p.raise_if_any()


def epoch_order(seed: int, epoch: int, windows: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the split's windows: [windows] window ids.

    The permutation `np.random.default_rng([seed, epoch]).permutation(windows)` draws, held as uint32
    while the ids fit: Generator.shuffle makes the same swaps whatever the array's dtype, and
    permutation(int) shuffles an int64 arange, 8 bytes per window on every rank (800 MB at 100M
    windows, 100B tokens at context 1024). Same order as ngpt_ds versions that held int64, so their
    checkpoints resume on the same batches."""
    order = np.arange(windows, dtype=np.uint32 if windows <= 2**32 else np.int64)
    np.random.default_rng([seed, epoch]).shuffle(order)
    return order


def _to_batch(windows: np.ndarray) -> Batch:
    """[B, T+1] tokens -> inputs [B, T], targets [B, T] (targets = inputs shifted by one)."""
    w = torch.from_numpy(windows)
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def _too_few(data_dir: Path, index: WindowIndex, dp_size: int, mbs: int, grad_accum: int) -> NgptConfigError:
    """The error for a split with fewer windows than one optimizer step (train: data-parallel size x micro-batch
    x accumulation) or one batch (validation: data-parallel size x micro-batch; grad_accum 1)."""
    split, seq_len, windows = index.split, index.seq_len, index.num_windows
    needed = dp_size * mbs * grad_accum
    if split == "train":
        what = (
            f"one optimizer step of data-parallel size x micro-batch x accumulation = {dp_size} x {mbs} x "
            f"{grad_accum} = {needed} windows"
        )
        fix = "use a smaller seq_len, micro-batch, accumulation or data-parallel size, or prepare more data"
    else:
        what = f"one {split} batch of data-parallel size x micro-batch = {dp_size} x {mbs} = {needed} windows"
        fix = (
            f"prepare the data again with a larger --val-fraction (it was {index.meta.val_fraction:g}), or use a "
            "smaller seq_len, micro-batch or data-parallel size"
        )
    message = (
        f"dataset {data_dir} split {split!r} has {windows} windows of seq_len+1 = {seq_len + 1} tokens, fewer than "
        f"{what}; {fix}"
    )
    shards = index.meta.splits[split].shards
    tokens = sum(s.tokens for s in shards)
    if (tokens - 1) // seq_len >= needed:
        # The tokens are there, cut into shards too short (--shard-tokens): "prepare more data" never helps.
        message += (
            f". Its {tokens} tokens would make {(tokens - 1) // seq_len} windows, but they lie in {len(shards)} "
            f"shard(s) of at most {max(s.tokens for s in shards)} tokens and a window never crosses a shard: "
            f"prepare it again with --shard-tokens well above {seq_len + 1} (default 100000000)"
        )
    return NgptConfigError(message)


def _describe(meta: DatasetMeta) -> str:
    splits = ", ".join(
        f"{name} {split.tokens:,} tokens in {len(split.shards)} shard(s)" for name, split in meta.splits.items()
    )
    return f"{splits}, tokenizer sha256 {meta.tokenizer_sha256[:12]}"


def same_dataset_on_every_rank(data_dir: Path) -> DatasetMeta:
    """The dataset's meta.json, the same on every rank of a started process group (collective there).

    Ranks take disjoint windows of one permutation, so this holds only when every rank reads the same
    dataset. A --data folder on node-local disks that differ (one node's copy stale, prepared from
    another corpus with the same tokenizer) passed every rank's own checks and trained silently on
    windows the ranks numbered differently. Every rank compares its meta.json with the others' and all
    stop with the same message; a rank that cannot read it answers with its error instead of raising
    alone while the others wait. Every rank must call it, with the same --data."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return load_dataset_meta(data_dir)
    meta: DatasetMeta | None = None
    try:
        meta = load_dataset_meta(data_dir)
        seen: tuple[Any, str] = (_what_training_reads(meta), _describe(meta))
    except (NgptConfigError, OSError) as err:  # an answer, not an exception: the others wait in the gather
        seen = (None, str(err))
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, seen)
    failed = next((r for r, (raw, _) in enumerate(everyone) if raw is None), None)
    if failed is not None:
        raise NgptConfigError(f"rank {failed}: {everyone[failed][1]}")
    differs = next((r for r in range(1, len(everyone)) if _differing(everyone[0][0], everyone[r][0])), None)
    if differs is not None:
        first, other = everyone[0][0], everyone[differs][0]
        fields = ", ".join(_differing(first, other))
        raise NgptConfigError(
            f"ranks 0 and {differs} read different datasets at --data {data_dir} (they differ in {fields}; rank 0: "
            f"{everyone[0][1]}; rank {differs}: {everyone[differs][1]}). Every rank must read the same prepared "
            "dataset: copy one folder to every node, or put it on storage that every node shares"
        )
    assert meta is not None
    return meta


def _what_training_reads(meta: DatasetMeta) -> dict[str, Any]:
    """The parts of meta.json that decide which tokens a window holds. Not the free-text fields (source,
    which names the input files; tokenizer origin; license; created_by): copies prepared on each node
    from its own copy of one corpus are the same data with other paths in them."""
    return {
        "format_version": meta.format_version,
        "vocab_size": meta.vocab_size,
        "dtype": meta.dtype,
        "eos_id": meta.eos_id,
        "tokenizer sha256": meta.tokenizer_sha256,
        "shards": {name: [(shard.file, shard.tokens) for shard in split.shards] for name, split in meta.splits.items()},
        "shard contents": _contents_digest(meta),
    }


def _differing(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """The fields of `_what_training_reads` in which two ranks' datasets differ. The shard contents only
    where both copies record hashes: a copy prepared before ngpt_ds recorded them (it loads with a warning)
    beside one that has them, by `--add-hashes` or prepared anew, holds no evidence of other tokens, and
    stopped the job as 'different datasets'."""
    return [
        key
        for key in mine
        if mine[key] != theirs[key] and not (key == "shard contents" and None in (mine[key], theirs[key]))
    ]


def _contents_digest(meta: DatasetMeta) -> str | None:
    """One sha256 over the block hashes meta.json records (None when it records none): copies of the same
    sizes and tokenizer that hold other tokens (prepared with another seed, or edited) differ here."""
    if meta.hash_block_bytes is None:
        return None
    blocks = [[shard.sha256_blocks for shard in split.shards] for _, split in sorted(meta.splits.items())]
    return hashlib.sha256(json.dumps([meta.hash_block_bytes, blocks]).encode()).hexdigest()


class TokenWindowLoader:
    """Endless, seeded, resumable stream of training batches for one data-parallel rank.

    next_batch() -> (inputs [micro_batch_size, seq_len], targets [micro_batch_size, seq_len]),
    int64 token ids. Iterating yields the same stream. `epoch` is the epoch the next batch
    comes from; `windows_per_epoch` counts the split's windows (all ranks together). A token id beyond
    the vocabulary raises, or with `faults` is recorded there (ngpt_ds.data.windows.WindowIndex).
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        seq_len: int,
        micro_batch_size: int,
        dp_rank: int,
        dp_size: int,
        seed: int,
        grad_accum: int = 1,
        faults: DeferredFaults | None = None,
    ):
        _check_layout("TokenWindowLoader", seq_len, micro_batch_size, dp_rank, dp_size)
        self.data_dir = Path(data_dir)
        self.meta = same_dataset_on_every_rank(self.data_dir)
        self.split = split
        self.seq_len = seq_len
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.seed = seed
        self.global_batch = dp_size * micro_batch_size
        step_batch = self.global_batch * grad_accum  # windows per optimizer step
        self._index = WindowIndex(self.meta, split, seq_len, faults, needed_windows=step_batch)
        self.windows_per_epoch = self._index.num_windows
        if self.windows_per_epoch < step_batch:
            raise _too_few(self.data_dir, self._index, dp_size, micro_batch_size, grad_accum)
        self.grad_accum = grad_accum
        self.step_batch = step_batch
        # Micro-batches of an epoch started at slot 0 (every epoch but the first after a resume with another
        # global batch).
        self.batches_per_epoch = (self.windows_per_epoch // step_batch) * grad_accum
        self.epoch = 0
        self._consumed = 0  # slots of this epoch's permutation taken, over all ranks
        self._micro = 0  # micro-batches taken of the current optimizer step
        self._order: tuple[int, np.ndarray] | None = None

    def _permutation(self) -> np.ndarray:
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, epoch_order(self.seed, self.epoch, self.windows_per_epoch))
        return self._order[1]

    def next_batch(self) -> Batch:
        start = self._consumed + self.dp_rank * self.micro_batch_size
        ids = self._permutation()[start : start + self.micro_batch_size]
        self._consumed += self.global_batch
        self._micro += 1
        if self._micro == self.grad_accum:  # a step's end: the epoch ends when the next step would not fit
            self._micro = 0
            self._next_epoch_unless_a_step_fits()
        return _to_batch(self._index.read(ids))

    def _next_epoch_unless_a_step_fits(self) -> None:
        if self._consumed + self.step_batch > self.windows_per_epoch:
            self.epoch, self._consumed = self.epoch + 1, 0

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        return self.next_batch()

    def state_dict(self) -> dict[str, int]:
        """Position of the next optimizer step, the same on every rank, and the validation split's fingerprint (the
        sha256 as one integer; absent without block hashes); plain ints (JSON-serialisable). Taken between
        optimizer steps (where the trainer saves): a resume starts a whole step."""
        if self._micro != 0:
            raise RuntimeError(
                f"TokenWindowLoader.state_dict() after {self._micro} of the step's {self.grad_accum} micro-batches: "
                "take it between optimizer steps"
            )
        validation = _validation_fingerprint(self.meta)
        return {
            "version": _STATE_VERSION,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "windows_per_epoch": self.windows_per_epoch,
            "epoch": self.epoch,
            "windows_consumed": self._consumed,
        } | ({} if validation is None else {"validation_sha256": validation})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the exact next window. The global batch and its split may change (another
        data-parallel size, micro-batch or accumulation): the position is in windows over all ranks, and
        the steps go on from it while they fit in the epoch (the module's docstring)."""
        p = Problems("data loader state (from the checkpoint)")
        p.check(
            state.get("version") == _STATE_VERSION,
            "version",
            state.get("version"),
            f"this ngpt_ds reads version {_STATE_VERSION}; start the data order afresh",
        )
        for key, mine in (("seed", self.seed), ("seq_len", self.seq_len)):
            p.check(
                state.get(key) == mine, key, state.get(key), f"this run has {key} = {mine}; resume with the same {key}"
            )
        # Not "resume with dataset <this run's>": that is the one that differs.
        p.check(
            state.get("windows_per_epoch") == self.windows_per_epoch,
            "windows_per_epoch",
            state.get("windows_per_epoch"),
            f"--data {self.data_dir} has {self.windows_per_epoch} {self.split} windows of {self.seq_len + 1} tokens, "
            "so the checkpoint was trained on other data; resume with its dataset (data_dir in the checkpoint's "
            "config.yaml), or start a new run with another --out",
        )
        consumed = state.get("windows_consumed")
        p.check(
            type(consumed) is int and 0 <= consumed < self.windows_per_epoch,
            "windows_consumed",
            consumed,
            f"must be an integer in [0, windows_per_epoch = {self.windows_per_epoch})",
        )
        epoch = state.get("epoch")
        p.check(type(epoch) is int and epoch >= 0, "epoch", epoch, "must be an integer >= 0")
        p.raise_if_any()
        assert isinstance(consumed, int) and isinstance(epoch, int)
        self.epoch, self._consumed, self._micro = epoch, consumed, 0
        self._next_epoch_unless_a_step_fits()  # saved past this batch's last whole step of the epoch
        self._warn_if_validation_changed(state.get("validation_sha256"))

    def _warn_if_validation_changed(self, recorded: object) -> None:
        """Warn when the validation split is not the one the checkpoint's run evaluated on. Nothing to compare in a
        state saved before the fingerprint was recorded, or where either side's shards carry no block hashes."""
        now = _validation_fingerprint(self.meta)
        if type(recorded) is not int or now is None or recorded == now:
            return
        _log.warning(
            f"--data {self.data_dir}: its validation split is not the one the checkpoint's run evaluated on (its "
            "shards, token counts or block hashes differ from those recorded at the save), so the validation losses "
            "from here on are not comparable with those before the resume. The training split is the same. To keep "
            "them comparable, resume with the checkpoint's dataset (a copy elsewhere is fine)"
        )


def _validation_fingerprint(meta: DatasetMeta) -> int | None:
    """The validation split's fingerprint as one integer: the loader's state holds ints only."""
    digest = split_fingerprint(meta, "validation")
    return None if digest is None else int(digest, 16)


class ValidationBatches:
    """Fixed validation windows for one data-parallel rank; iterate as often as you like.

    The windows are spread evenly over the split; ranks get disjoint ones. Yields
    (inputs [micro_batch_size, seq_len], targets [micro_batch_size, seq_len]) int64; len() batches.
    """

    def __init__(self, index: WindowIndex, window_ids: np.ndarray):
        self._index = index
        self._ids = window_ids  # [num_batches, micro_batch_size]

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[Batch]:
        for ids in self._ids:
            yield _to_batch(self._index.read(ids))


def validation_batches(
    data_dir: str | Path,
    seq_len: int,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
    max_batches: int | None = None,
    split: str = "validation",
    faults: DeferredFaults | None = None,
) -> ValidationBatches:
    """The same validation windows on every call: at most max_batches batches per rank. A token id beyond
    the vocabulary raises, or with `faults` is recorded there (ngpt_ds.data.windows.WindowIndex).

    Every rank gets the same number of batches (so collective ops stay matched).
    """
    _check_layout("validation_batches", seq_len, micro_batch_size, dp_rank, dp_size)
    if max_batches is not None and max_batches < 1:
        raise NgptConfigError(f"validation max_batches = {max_batches}: must be >= 1 or None (all)")
    data_dir = Path(data_dir)
    per_batch = dp_size * micro_batch_size
    index = WindowIndex(load_dataset_meta(data_dir), split, seq_len, faults, needed_windows=per_batch)
    if index.num_windows < per_batch:
        raise _too_few(data_dir, index, dp_size, micro_batch_size, 1)
    n_batches = index.num_windows // per_batch
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    n = n_batches * per_batch
    # Strictly increasing because num_windows >= n: distinct windows, evenly spread.
    chosen = (np.arange(n, dtype=np.int64) * index.num_windows) // n
    mine = chosen.reshape(n_batches, dp_size, micro_batch_size)[:, dp_rank, :]
    return ValidationBatches(index, mine)
