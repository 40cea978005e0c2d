"""Compressed corpus files whose decompressor this Python lacks: the README's own example is 'web/*.jsonl.zst'."""

from __future__ import annotations

import gzip
import json

import fsspec.compression
import pytest

from ngpt_ds.cli.prepare import main
from ngpt_ds.data.sources import CorpusSpec, open_corpus
from ngpt_ds.errors import NgptConfigError

ZSTD_MAGIC = bytes.fromhex("28B52FFD")
LZ4_MAGIC = bytes.fromhex("04224D18")


@pytest.mark.parametrize(
    ("name", "magic", "compression", "package"),
    [("web.jsonl.zst", ZSTD_MAGIC, "zstd", "zstandard"), ("web.jsonl.lz4", LZ4_MAGIC, "lz4", "lz4")],
)
def test_a_file_whose_decompressor_is_missing_names_the_package(
    tmp_path, monkeypatch, capsys, name, magic, compression, package
):
    """Without the zstandard (or lz4) package, `--input 'web/*.jsonl.zst'` stopped with 'could not read it
    (ValueError: Compression type zstd not supported); fix or remove the file, or check that its extension
    matches its contents': the files were sound, a package was missing. Under prepare.sbatch every part of the
    array failed so. It is now named before anything is read or written."""
    monkeypatch.delitem(fsspec.compression.compr, compression, raising=False)  # as where it is not installed
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / name).write_bytes(magic + b"\0" * 60)
    with pytest.raises(NgptConfigError) as err:
        open_corpus(CorpusSpec(inputs=(str(tmp_path / "web" / "*.jsonl*"),)))
    assert str(err.value) == (
        f"--input file {str(tmp_path / 'web' / name)!r} is {compression}-compressed, and this Python cannot "
        f"decompress it: install the {package} package (pip install {package}) on every node that reads the "
        "corpus, or decompress the files"
    )
    assert main(["--input", str(tmp_path / "web" / name), "--out", str(tmp_path / "ds"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {err.value}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["web"]


def test_gzip_files_are_read(tmp_path):
    """The check leaves a decompressor that is there alone."""
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "one"}) + "\n" + json.dumps({"text": "two"}) + "\n")
    assert list(open_corpus(CorpusSpec(inputs=(str(tmp_path / "a.jsonl.gz"),))).texts()) == ["one", "two"]
