"""A corpus folder (read whole by datasets) of compressed files whose decompressor this Python lacks."""

from __future__ import annotations

import gzip
import json

import fsspec.compression

from ngpt_ds.cli.prepare import main
from ngpt_ds.data.sources import CorpusSpec, open_corpus

ZSTD_MAGIC = bytes.fromhex("28B52FFD")


def test_a_folder_of_zst_files_without_zstandard_names_the_package(tmp_path, monkeypatch, capsys):
    """Fault: `--input web/` (a folder, which datasets reads whole) holding .jsonl.zst files, where zstandard is
    not installed, stopped with "dataset dir web split 'train', text field 'text': could not read it (ValueError:
    Compression type zstd not supported); check the name, --config and --split; for a hub name, check that this
    machine can reach the hub (or pass local files)": the files were sound and the hub had nothing to do with it.
    The same files by a glob named the package. Now the folder's files get the glob's message."""
    monkeypatch.delitem(fsspec.compression.compr, "zstd", raising=False)  # as where zstandard is not installed
    web = tmp_path / "web"
    (web / "2024").mkdir(parents=True)
    with gzip.open(web / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "one"}) + "\n")
    (web / "2024" / "b.jsonl.zst").write_bytes(ZSTD_MAGIC + b"\0" * 60)
    assert main(["--input", str(web), "--out", str(tmp_path / "ds"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --input file {str(web / '2024' / 'b.jsonl.zst')!r} is zstd-compressed, and this Python cannot "
        "decompress it: install the zstandard package (pip install zstandard) on every node that reads the corpus, "
        "or decompress the files"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["web"]


def test_a_folder_of_gzip_files_is_read(tmp_path):
    """The check leaves a folder whose decompressors are there alone."""
    web = tmp_path / "web"
    web.mkdir()
    with gzip.open(web / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "one"}) + "\n" + json.dumps({"text": "two"}) + "\n")
    assert list(open_corpus(CorpusSpec(inputs=(str(web),))).texts()) == ["one", "two"]
