"""Faults of the reads that check a local corpus before datasets reads it (ngpt_ds.data.local_inputs).

1. The check that no paragraph or line of a text --input is over the 256 MiB bound ran a regex over every end in
   Python: 31-46 MB/s on a corpus of short lines (line mode), 170-360 MB/s by paragraph, against 23 and 100 MB/s
   for datasets' read that follows. Every --num-shards part runs it over the whole corpus (each part reads the whole
   stream), so N parts scanned it N times at that speed. A text whose newlines are all \\n is now checked with
   bytes.rfind, a few calls per block (fits_text_documents); the regex scan runs only where that check fails or
   meets a \\r, to name the document.
2. --text-sample-by document had no bound: a whole file is one document, read into memory whole (a 256 MiB file:
   1.1 GB at peak; a 5 GB file 20 GB, or a MemoryError after the tokenizer was trained). A file over the bound of a
   paragraph or a line is now refused before anything is read, naming its size and the fix.

The bound is passed in small here: no test writes hundreds of megabytes.
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

from ngpt_ds.data import local_inputs
from ngpt_ds.data.sources import CorpusSpec, open_corpus
from ngpt_ds.errors import NgptConfigError

BOUND = 64


@pytest.fixture
def small_bound(monkeypatch):
    monkeypatch.setattr(local_inputs, "MAX_TEXT_DOCUMENT_BYTES", BOUND)


def _texts(rng: random.Random) -> list[bytes]:
    """Texts of \\n newlines: runs of every length, documents of every length around the bounds tried."""
    texts = [b"", b"\n", b"\n\n", b"a", b"a\n", b"a\n\n", b"\n\na\n\n\nb\n"]
    for _ in range(400):
        alphabet = rng.choice([b"ab\n\n\n", b"abcdefg\n", b"abcdefghijklmnop\n"])
        texts.append(bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 300))))
    return texts


def test_the_quick_check_says_what_the_exact_scan_says(tmp_path, monkeypatch):
    """fits_text_documents(file, mode, limit) is True exactly where the regex scan's longest paragraph or line is
    within `limit`: on 400 random texts, with blocks of 1 to 40 bytes (ends and runs of newlines cut by a block
    boundary), for limits around their documents' lengths. Plain and gzip-compressed."""
    rng = random.Random(35)
    file = tmp_path / "a.txt"
    checked = {True: 0, False: 0}
    for index, text in enumerate(_texts(rng)):
        monkeypatch.setattr(local_inputs, "_SCAN_BYTES", rng.randint(1, 40))
        path = file if index % 5 else tmp_path / "a.txt.gz"
        path.write_bytes(gzip.compress(text) if path.suffix == ".gz" else text)
        for mode in ("paragraph", "line"):
            longest = local_inputs.longest_text_document(str(path), mode, 1 << 30)[0]
            for limit in {0, max(0, longest - 1), longest, longest + 1, rng.randint(0, 100)}:
                fits = local_inputs.fits_text_documents(str(path), mode, limit)
                assert fits == (longest <= limit), (text, mode, limit, longest)
                checked[fits] += 1
    assert min(checked.values()) > 500  # both answers were tried often


def test_text_within_the_bound_is_not_scanned_by_the_regex(tmp_path, small_bound, regex_scans):
    """Before: every text file of the corpus went through longest_text_document (3 calls here). Now a file of \\n
    newlines within the bound needs none, nor (lf_blocks) one with \\r\\n newlines, and a file over the
    bound gets it to name the paragraph (its refusal as before)."""
    calls = regex_scans
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_bytes(b"one\ntwo\n\nthree\n")
    (corpus / "b.txt").write_bytes(b"four\n\n" + b"x" * 60 + b"\n\nfive\n")
    (corpus / "c.txt").write_bytes(b"six\r\n\r\nseven\r\n")
    read = open_corpus(CorpusSpec(inputs=(str(corpus / "*.txt"),)))
    assert calls == []
    assert list(read.texts()) == ["one\ntwo", "three\n", "four", "x" * 60, "five\n", "six", "seven\n"]
    bad = corpus / "d.txt"
    bad.write_bytes(b"eight\n\n" + b"y\n" * 40)
    calls.clear()
    with pytest.raises(NgptConfigError, match=r"'.*d\.txt': the paragraph at byte 7 is 80 bytes, longer than the 64"):
        open_corpus(CorpusSpec(inputs=(str(corpus / "*.txt"),)))
    assert calls == ["d.txt"]


def _whole_file_refusal(file: Path, size: str, decompressed: str = "") -> str:
    return (
        f"--input file {str(file)!r} is {size}{decompressed}, longer than the {BOUND} bytes a text document may be: "
        "with --text-sample-by document the whole file is one document, which datasets reads whole and needs about "
        "4 times its size in memory. Pass --text-sample-by paragraph (documents end at an empty line) or line, split "
        "it into files of one document each, or leave that file out"
    )


@pytest.mark.parametrize("given", ["file", "glob", "folder"])
def test_a_whole_file_over_the_bound_is_refused_before_it_is_read(tmp_path, small_bound, given):
    """Before: read whole as one document (the file of 65 bytes here is opened and read). Now: one error naming the
    file, its size and the fix; a file of the bound's size is read as one document."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("x" * BOUND, encoding="utf-8")
    read = open_corpus(CorpusSpec(inputs=(str(corpus / "a.txt"),), text_sample_by="document"))
    assert list(read.texts()) == ["x" * BOUND]
    bad = corpus / "b.txt"
    bad.write_text("y" * (BOUND + 1), encoding="utf-8")
    inputs = {"file": str(bad), "glob": str(corpus / "*.txt"), "folder": str(corpus)}[given]
    with pytest.raises(NgptConfigError) as err:
        open_corpus(CorpusSpec(inputs=(inputs,), text_sample_by="document"))
    assert str(err.value) == _whole_file_refusal(bad, "65 bytes")


def test_a_compressed_whole_file_is_counted_no_further_than_the_bound(tmp_path, small_bound, monkeypatch):
    """A .txt.gz is refused by its decompressed size, counted in blocks that stop past the bound (8-byte blocks
    here: 72 bytes read of its 10,000, a bomb is not inflated whole)."""
    monkeypatch.setattr(local_inputs, "_SCAN_BYTES", 8)
    bomb = tmp_path / "bomb.txt.gz"
    bomb.write_bytes(gzip.compress(b"z" * 10_000))
    assert local_inputs.text_file_bytes(str(bomb), BOUND) == (72, False)
    with pytest.raises(NgptConfigError) as err:
        open_corpus(CorpusSpec(inputs=(str(bomb),), text_sample_by="document"))
    assert str(err.value) == _whole_file_refusal(bomb, "at least 72 bytes", " decompressed")
