"""Content hashes of token shards: recorded in meta.json at preparation, checked when a dataset is opened.

meta.json's token counts catch a shard of the wrong size, not one of the right size with the wrong bytes:
a node-local copy truncated and re-extended, an interrupted copy, a filesystem that returned holes (all
zeros), flipped bits. Those trained silently on garbage. Each shard records the sha256 of every
`hash_block_bytes` block of its file (the last block is shorter; a small shard is one block), so a check
can read a few blocks, be split across processes, and name the byte range that is damaged.

Opening a dataset (`load_dataset_meta`) checks a bounded sample: every block when the shards total at
most SAMPLE_ALL_BELOW bytes, else SAMPLE_BLOCKS_PER_SHARD blocks of each shard (its last block, where a
truncated or interrupted copy differs, and one more chosen by the shard's name), split between the ranks
of a node (each node reads its own copy), so startup stays seconds on hundreds of GB. `ngpt-prepare --verify DIR` reads every block.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BLOCK_BYTES = 4 << 20
"""Default hash block. 4 MiB: a 200 GB dataset records 48k hashes (3 MB of meta.json), and a sampled
check reads 2 blocks of each 200 MB shard (4 %)."""
SAMPLE_ALL_BELOW = 1 << 30
"""Datasets up to this many bytes of shards are checked in full when opened."""
SAMPLE_BLOCKS_PER_SHARD = 2
HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
MODES = ("sample", "full")
_READ = 1 << 20


def block_count(size: int, block_bytes: int) -> int:
    """Blocks of a file of `size` bytes; an empty file is one (empty) block."""
    return max(1, -(-size // block_bytes))


def block_range(size: int, block_bytes: int, index: int) -> tuple[int, int]:
    """[start, end) bytes of block `index` of a file of `size` bytes."""
    start = index * block_bytes
    return start, min(start + block_bytes, size)


def hash_range(path: Path, start: int, end: int) -> str:
    """sha256 of bytes [start, end) of `path`; a file that ends early hashes what it has."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            chunk = f.read(min(_READ, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def block_hashes(path: Path, block_bytes: int = BLOCK_BYTES) -> tuple[str, ...]:
    """sha256 of every block of the file at `path`, in order."""
    size = path.stat().st_size
    return tuple(hash_range(path, *block_range(size, block_bytes, i)) for i in range(block_count(size, block_bytes)))


@dataclass(frozen=True, slots=True)
class Block:
    """One block of one shard to check."""

    file: str
    size: int
    """Shard size in bytes, as meta.json's token count says."""
    index: int
    expected: str

    def byte_range(self, block_bytes: int) -> tuple[int, int]:
        return block_range(self.size, block_bytes, self.index)


def _sampled(file: str, count: int) -> list[int]:
    """Block indices of one shard checked by the sampled check: the last, and one more picked by the
    shard's name (the same on every rank and every run)."""
    if count <= SAMPLE_BLOCKS_PER_SHARD:
        return list(range(count))
    other = int(hashlib.sha256(file.encode()).hexdigest(), 16) % (count - 1)
    return sorted({other, count - 1})


def blocks_to_check(
    shards: list[tuple[str, int, tuple[str, ...]]], block_bytes: int, mode: str, rank: int, world_size: int
) -> list[Block]:
    """This rank's share of the blocks `mode` checks. shards: (file, size in bytes, recorded hashes)."""
    full = mode == "full" or sum(size for _, size, _ in shards) <= SAMPLE_ALL_BELOW
    chosen = [
        Block(file, size, i, hashes[i])
        for file, size, hashes in shards
        for i in (range(len(hashes)) if full else _sampled(file, len(hashes)))
    ]
    return chosen[rank::world_size]


def bad_blocks(
    data_dir: Path, blocks: list[Block], block_bytes: int, advance: Callable[[int], object] = lambda n: None
) -> list[tuple[Block, str]]:
    """(block, what is wrong) for every block whose bytes differ from its recorded hash, in order.
    advance(n) is called with the bytes read after each block (a progress bar)."""
    bad = []
    for block in blocks:
        start, end = block.byte_range(block_bytes)
        try:
            if hash_range(data_dir / block.file, start, end) != block.expected:
                bad.append((block, "sha256 differs from meta.json"))
        except OSError as e:
            bad.append((block, f"unreadable ({type(e).__name__}: {e.strerror or e})"))
        advance(end - start)
    return bad
