"""The content check of a prepared dataset's shards against the block hashes its meta.json records
(ngpt_ds.data.shard_hashes): the bounded sample checked whenever a dataset is opened
(`check_shard_contents`, called by ngpt_ds.data.shards.load_dataset_meta), the full check of
`ngpt-prepare --verify`, and `ngpt-prepare --add-hashes` for datasets prepared before the hashes.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ngpt_ds import log
from ngpt_ds.data import shard_hashes
from ngpt_ds.data.shards import META_FILE, DatasetMeta, load_dataset_meta, write_meta
from ngpt_ds.errors import NgptConfigError

_log = log.get(__name__)


_checked: set[tuple] = set()
"""Datasets whose sampled check passed in this process, keyed by where and what their files are: the
trainer opens its dataset several times at startup and reads the sample once."""


def check_shard_contents(meta: DatasetMeta) -> None:
    """The sampled content check of a dataset being opened: the sampled blocks (ngpt_ds.data.shard_hashes)
    must match their recorded sha256. Up to SAMPLE_ALL_BELOW bytes every rank reads them all (under a
    second); beyond, the ranks of a node split them, each node reading its own copy. A dataset without
    hashes logs one warning and passes."""
    from ngpt_ds import distributed

    if meta.hash_block_bytes is None:
        key: tuple = ("unhashed", str(meta.data_dir.resolve()))
        if key not in _checked:
            _checked.add(key)
            _log.warning(
                f"dataset {meta.data_dir}: its meta.json records no shard hashes (prepared by an older ngpt_ds), so "
                f"damaged shard contents go unnoticed; add them with `ngpt-prepare --add-hashes {meta.data_dir}` "
                "(on a copy you trust), or prepare it again"
            )
        return
    try:
        env = distributed.discover()
        rank, ranks = env.local_rank, env.local_world_size
    except NgptConfigError:  # the launcher's own check reports that environment
        rank, ranks = 0, 1
    total = sum(s.tokens for split in meta.splits.values() for s in split.shards) * meta.np_dtype.itemsize
    if not 0 <= rank < ranks or total <= shard_hashes.SAMPLE_ALL_BELOW:
        rank, ranks = 0, 1
    stats = []
    for name in (META_FILE, *(s.file for split in meta.splits.values() for s in split.shards)):
        st = (meta.data_dir / name).stat()
        stats.append((name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    key = (str(meta.data_dir.resolve()), rank, ranks, tuple(stats))
    if key in _checked:
        return
    problems = verify_shards(meta.data_dir, meta, rank, ranks, "sample")
    if problems:
        raise shard_error(meta.data_dir, problems, "sampled")
    _checked.add(key)


def verify_shards(
    data_dir: Path, meta: DatasetMeta, rank: int = 0, world_size: int = 1, mode: str = "sample", progress: bool = False
) -> list[str]:
    """Check rank `rank` of `world_size`'s share of the shard blocks that `mode` reads ('sample': the bounded
    sample of ngpt_ds.data.shard_hashes; 'full': every block) against meta.json's hashes; one line for each
    bad block, naming the shard file and its byte range. `meta` must carry hashes (hash_block_bytes)."""
    assert meta.hash_block_bytes is not None and mode in shard_hashes.MODES
    itemsize = meta.np_dtype.itemsize
    shards = [
        (s.file, s.tokens * itemsize, s.sha256_blocks or ()) for split in meta.splits.values() for s in split.shards
    ]
    blocks = shard_hashes.blocks_to_check(shards, meta.hash_block_bytes, mode, rank, world_size)
    total = sum(b.byte_range(meta.hash_block_bytes)[1] - b.byte_range(meta.hash_block_bytes)[0] for b in blocks)
    with _bar_class()(total=total, desc="verifying", unit="B", unit_scale=True, disable=not progress) as bar:
        bad = shard_hashes.bad_blocks(Path(data_dir), blocks, meta.hash_block_bytes, bar.update)
    found = []
    for block, what in bad:
        start, end = block.byte_range(meta.hash_block_bytes)
        of = shard_hashes.block_count(block.size, meta.hash_block_bytes)
        found.append(f"{block.file} bytes [{start}, {end}) (block {block.index} of {of}): {what}")
    return found


def _bar_class() -> type:
    """tqdm's bar without its monitor thread: where no thread can start (a low `ulimit -u`), tqdm printed its own
    three-line TqdmMonitorWarning ('... due to: can't start new thread') above the command's lines. The monitor
    only redraws a bar left without updates for `maxinterval` seconds; this one is updated after every block."""
    from tqdm import tqdm

    class Bar(tqdm):
        monitor_interval = 0

    return Bar


def shard_error(data_dir: Path, problems: list[str], how: str) -> NgptConfigError:
    """The error for damaged shards: every bad block, then the fix."""
    lines = "\n".join(f"  - {line}" for line in problems)
    return NgptConfigError(
        f"dataset {data_dir}: {len(problems)} block(s) of its shards differ from the sha256 that meta.json records "
        f"({how} check): the files are damaged (zero-filled, truncated and re-extended, an interrupted copy, or "
        f"changed)\n{lines}\ncopy the dataset again from a good copy (`ngpt-prepare --verify DIR` checks every "
        f"block), or delete {data_dir} and prepare it again"
    )


def add_hashes(data_dir: str | Path, block_bytes: int = shard_hashes.BLOCK_BYTES) -> DatasetMeta:
    """Record the block hashes of a dataset prepared without them (`ngpt-prepare --add-hashes DIR`): they
    describe the shards as they are now, so run it on a copy you trust. Rewrites meta.json in place."""
    meta = load_dataset_meta(data_dir, verify_contents=False)
    if meta.hash_block_bytes is not None:
        raise NgptConfigError(
            f"dataset {meta.data_dir} already records shard hashes; check them with `ngpt-prepare --verify "
            f"{meta.data_dir}` (they are not replaced: a damaged shard would then pass)"
        )
    # write_meta writes meta.json.tmp and renames it over meta.json. The name is taken here, before the hours of
    # hashing: a file of our own (a meta.json.tmp already there, a link to a file elsewhere that a copied or
    # shared dataset brings, is removed: the link, not its target, which write_meta had overwritten), and a
    # folder that cannot be written (a read-only dataset) is named now, not after every shard was read.
    tmp = meta.data_dir / (META_FILE + ".tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
    except OSError as err:
        raise NgptConfigError(
            f"dataset {meta.data_dir}: cannot write its meta.json ({type(err).__name__}: {err.strerror or err}); "
            "--add-hashes rewrites meta.json in place: run it on a writable copy of the dataset"
        ) from None
    try:
        splits = {
            name: dataclasses.replace(
                split,
                shards=tuple(
                    dataclasses.replace(s, sha256_blocks=shard_hashes.block_hashes(meta.shard_path(s), block_bytes))
                    for s in split.shards
                ),
            )
            for name, split in meta.splits.items()
        }
        hashed = dataclasses.replace(meta, splits=splits, hash_block_bytes=block_bytes)
        write_meta(hashed, meta.data_dir)
    finally:
        tmp.unlink(missing_ok=True)  # left only when hashing or the write failed; meta.json is then unchanged
    return hashed
