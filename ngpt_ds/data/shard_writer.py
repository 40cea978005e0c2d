"""Writing one split's tokens into shard files (`<split>_NNNNNN.bin`), each hashed as it is closed.

The format is ngpt_ds.data.shards': flat little-endian ids, no header, a shard of N tokens N * itemsize bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from ngpt_ds.data import shard_hashes
from ngpt_ds.data.shards import DTYPES, ShardMeta, SplitMeta


@dataclass(kw_only=True, slots=True)
class ShardWriter:
    """Appends token ids of one split to `<split>_NNNNNN.bin` files of at most shard_tokens each."""

    directory: Path
    split: str
    dtype: str
    shard_tokens: int
    hash_block_bytes: int = shard_hashes.BLOCK_BYTES
    """Each closed shard's file is read back and hashed in blocks of this many bytes (sha256_blocks)."""
    documents: int = 0
    shards: list[ShardMeta] = field(default_factory=list)
    _file: IO[bytes] | None = None
    _count: int = 0

    def write(self, tokens: np.ndarray, documents: int) -> None:
        """tokens: 1-D ids of `documents` whole documents, EOS included."""
        self.documents += documents
        tokens = tokens.astype(DTYPES[self.dtype], copy=False)
        while tokens.size:
            if self._file is None:
                self._open()
            assert self._file is not None  # _open() just set it
            room = self.shard_tokens - self._count
            chunk, tokens = tokens[:room], tokens[room:]
            self._file.write(chunk.tobytes())
            self._count += chunk.size
            if self._count == self.shard_tokens:
                self._close_shard()

    def close(self) -> SplitMeta:
        if self._file is not None:
            self._close_shard()
        return SplitMeta(documents=self.documents, tokens=sum(s.tokens for s in self.shards), shards=tuple(self.shards))

    def _open(self) -> None:
        name = f"{self.split}_{len(self.shards):06d}.bin"
        self._file = open(self.directory / name, "wb")
        self._count = 0
        self.shards.append(ShardMeta(file=name, tokens=0))

    def _close_shard(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        name = self.shards[-1].file
        # Read back once written: the hashes then vouch for what the filesystem returns, not for the buffer.
        hashes = shard_hashes.block_hashes(self.directory / name, self.hash_block_bytes)
        self.shards[-1] = ShardMeta(file=name, tokens=self._count, sha256_blocks=hashes)
