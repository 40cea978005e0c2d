"""meta.json and part.json are written through ngpt_ds.files.replace_file, as the run files and COMPLETE are:
their temporary file is created new (O_EXCL | O_NOFOLLOW), never opened through a link.

Fault: shards.write_meta (meta.json.tmp) and parts._write_json (part.json.tmp) opened their temporary file
with a plain open, following a link there. `ngpt-prepare --add-hashes DIR` removes a link at meta.json.tmp
and takes the name before it hashes the shards (test_attack19_shard_add_hashes_link), but a link planted
during the hours of hashing, by anyone who can write to the shared dataset folder, was followed: the file it
named was overwritten with the dataset's metadata and the link renamed into place as meta.json.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ngpt_ds.data import parts, shard_check, shards

from conftest import REPO, without_shard_hashes


def test_a_link_planted_at_meta_json_tmp_while_add_hashes_hashes_is_not_followed(tiny_dataset, tmp_path, monkeypatch):
    """Fault: a link planted at meta.json.tmp after --add-hashes took the name, while it hashed the shards.
    Before: the victim file outside the dataset held '{\\n  "format": "ngpt_ds-token-shards", ...' and
    meta.json was a link to it. Now: the victim is untouched and meta.json is a regular file of the dataset."""
    data = without_shard_hashes(shutil.copytree(tiny_dataset, tmp_path / "data"))
    victim = tmp_path / "elsewhere" / "notes.txt"
    victim.parent.mkdir()
    victim.write_text("precious\n")
    real_block_hashes = shard_check.shard_hashes.block_hashes
    planted: list[Path] = []

    def hash_while_someone_plants_a_link(path, *args):
        if not planted:  # the reserved meta.json.tmp is there: replaced by a link to the victim
            tmp = data / "meta.json.tmp"
            assert tmp.is_file() and not tmp.is_symlink()
            tmp.unlink()
            tmp.symlink_to(victim)
            planted.append(tmp)
        return real_block_hashes(path, *args)

    monkeypatch.setattr(shard_check.shard_hashes, "block_hashes", hash_while_someone_plants_a_link)
    hashed = shard_check.add_hashes(data)

    assert planted == [data / "meta.json.tmp"]
    assert victim.read_text() == "precious\n"
    assert not (data / "meta.json").is_symlink()
    assert not os.path.lexists(data / "meta.json.tmp")
    assert shards.load_dataset_meta(data).hash_block_bytes == hashed.hash_block_bytes == 4 << 20


def test_write_meta_and_part_json_replace_a_link_at_their_temporary_name(tiny_dataset, tmp_path):
    """Fault: write_meta and parts._write_json followed a link at NAME.tmp. Before: the victim held the JSON
    written, and meta.json / part.json were links to it. Now: the link is removed, the victim is untouched, and
    each file is a regular file holding exactly the JSON written (2-space indent, a final newline)."""
    meta = shards.load_dataset_meta(tiny_dataset, verify_contents=False)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "meta.json.tmp").symlink_to(victim)
    (folder / "part.json.tmp").symlink_to(victim)

    shards.write_meta(meta, folder)
    parts._write_json(folder / "part.json", {"format": "a part", "num_parts": 2})

    assert victim.read_text() == "precious\n"
    assert sorted(os.listdir(folder)) == ["meta.json", "part.json"]
    assert not any((folder / name).is_symlink() for name in ("meta.json", "part.json"))
    assert (folder / "meta.json").read_bytes() == (tiny_dataset / "meta.json").read_bytes()
    assert (folder / "part.json").read_text() == '{\n  "format": "a part",\n  "num_parts": 2\n}\n'


def test_replace_file_is_one_function_that_the_data_tools_import_without_the_trainer():
    """The run files, COMPLETE, `latest`, meta.json and part.json are all written by ngpt_ds.files.replace_file;
    the data tools do not import ngpt_ds.train for it."""
    code = (
        "import sys\n"
        "import ngpt_ds.data.parts, ngpt_ds.data.shards, ngpt_ds.data.shard_check\n"
        "print(sorted(m for m in sys.modules if m.startswith('ngpt_ds.train')))\n"
        "from ngpt_ds.files import replace_file\n"
        "from ngpt_ds.train import checkpoint_layout, manifest, summary\n"
        "print(checkpoint_layout.replace_file is manifest.replace_file is summary.replace_file is replace_file)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout == "[]\nTrue\n"
