"""Fault: a default-corpus cache prepared by an ngpt_ds that recorded no shard hashes, on storage this
process cannot write (a read-only mount, another user's cache), stopped the main command with
`OSError: [Errno 30] Read-only file system: .../locks/kjv-bpe512-v1.lock`: ensure_default_dataset took
the cache's lock to add the hashes. It ran before (meta.json present, the cache used as it is); it runs
again, with the one warning of a dataset without hashes, and nothing in the cache changes.
"""

import errno
import shutil

from ngpt_ds.data import default_corpus as dc
from ngpt_ds.data.shards import load_dataset_meta

from conftest import without_shard_hashes


def test_an_unhashed_default_cache_that_cannot_be_written_is_used_as_it_is(tiny_dataset, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    out = dc.default_dataset_dir(cache, 512)
    shutil.copytree(tiny_dataset, out)
    (cache / "locks").mkdir()  # made by the older ngpt_ds that prepared the cache
    without_shard_hashes(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    class ReadOnlyLock:  # what filelock raises opening its lock file on a read-only mount
        def __init__(self, path):
            self.path = path

        def __enter__(self):
            raise OSError(errno.EROFS, "Read-only file system", self.path)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(dc, "FileLock", ReadOnlyLock)
    monkeypatch.setattr(dc, "prepare_default_dataset", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    assert dc.ensure_default_dataset(cache, 512, progress=False) == out
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert load_dataset_meta(out).hash_block_bytes is None
