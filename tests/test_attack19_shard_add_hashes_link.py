"""`ngpt-prepare --add-hashes DIR` writes only inside DIR (ngpt_ds.data.shard_check.add_hashes).

Fault: add_hashes rewrote meta.json by writing meta.json.tmp and renaming it, and opened meta.json.tmp for
writing through whatever was there: a dataset folder copied or shared with a link `meta.json.tmp -> FILE`
got FILE, outside the folder, truncated and overwritten with the dataset's meta.json, and meta.json became a
link to it. Before: FILE held '{\\n  "format": "ngpt_ds-token-shards", ...' and the command reported success.
Now: the link is removed first (the link, not the file it names), and meta.json is a file of its own.
"""

import os
import shutil
from pathlib import Path

from ngpt_ds.data import shard_check, shards

from conftest import without_shard_hashes


def unhashed_copy(tiny_dataset: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    return without_shard_hashes(data)


def test_a_meta_tmp_link_does_not_overwrite_the_file_it_names(tiny_dataset, tmp_path):
    data = unhashed_copy(tiny_dataset, tmp_path)
    victim = tmp_path / "elsewhere" / "notes.txt"
    victim.parent.mkdir()
    victim.write_text("precious\n")
    os.symlink(victim, data / "meta.json.tmp")

    hashed = shard_check.add_hashes(data)

    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in victim.parent.iterdir()) == ["notes.txt"]
    meta_file = data / "meta.json"
    assert not meta_file.is_symlink() and meta_file.is_file()
    assert not os.path.lexists(data / "meta.json.tmp")
    reread = shards.load_dataset_meta(data)
    assert reread.hash_block_bytes == hashed.hash_block_bytes == 4 << 20
    assert [s.sha256_blocks for s in reread.splits["train"].shards] == [
        s.sha256_blocks for s in hashed.splits["train"].shards
    ]


def test_a_stale_meta_tmp_file_is_replaced(tiny_dataset, tmp_path):
    """A meta.json.tmp left by an interrupted write (a plain file) is no obstacle: it is replaced."""
    data = unhashed_copy(tiny_dataset, tmp_path)
    (data / "meta.json.tmp").write_text("{half")
    shard_check.add_hashes(data)
    assert not os.path.lexists(data / "meta.json.tmp")
    assert shards.load_dataset_meta(data).hash_block_bytes == 4 << 20
