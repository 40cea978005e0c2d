"""`ngpt-prepare --add-hashes DIR` writes only inside DIR (ngpt_ds.data.shard_check.add_hashes).

Fault: add_hashes rewrote meta.json by writing meta.json.tmp and renaming it, and opened meta.json.tmp for
writing through whatever was there: a dataset folder copied or shared with a link `meta.json.tmp -> FILE`
got FILE, outside the folder, truncated and overwritten with the dataset's meta.json, and meta.json became a
link to it. Before: FILE held '{\\n  "format": "ngpt_ds-token-shards", ...' and the command reported success.
Now: the link is removed first (the link, not the file it names), and meta.json is a file of its own.
The name meta.json.tmp is taken before the shards are hashed, so a folder that cannot be written is named then.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ngpt_ds.data import shard_check, shards
from ngpt_ds.errors import NgptConfigError

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


def test_a_read_only_dataset_is_named_before_its_shards_are_hashed(tiny_dataset, tmp_path, mount_tmpfs, monkeypatch):
    """Fault: --add-hashes on a dataset that cannot be written (a shared, read-only copy) hashed every shard (hours
    for hundreds of GB) and then stopped in write_meta with a traceback ('OSError: [Errno 30] Read-only file
    system'). Before: a traceback after all the hashing. Now: an NgptConfigError naming the folder and the fix,
    before any shard is read."""
    disk = mount_tmpfs(8 << 20)
    data = unhashed_copy(tiny_dataset, disk)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    hashed: list[Path] = []
    monkeypatch.setattr(shard_check.shard_hashes, "block_hashes", lambda path, *_: hashed.append(path) or ())
    with pytest.raises(NgptConfigError) as err:
        shard_check.add_hashes(data)
    assert str(err.value) == (
        f"dataset {data}: cannot write its meta.json (OSError: Read-only file system); --add-hashes rewrites "
        "meta.json in place: run it on a writable copy of the dataset"
    )
    assert hashed == []
