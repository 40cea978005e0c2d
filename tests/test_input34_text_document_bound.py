"""Fault: a text --input read by paragraph (--text-sample-by paragraph, the default) had no bound on one paragraph.
datasets' text builder appends 10 MB blocks to a paragraph until it meets an empty line, so a file without one (a
dump of one document per line, a log, a small .txt.gz inflating to gigabytes) was read into memory whole, about 4
times its size (a 256 MiB paragraph: 1.2 GB at peak), after the tokenizer was trained or hours into the tokenizing;
a line (--text-sample-by line) likewise. Json lines had a 256 MiB bound (tests/test_red32_json_line_bound.py).

Each text file (named, matched by a glob, or in a corpus folder of text files) is now scanned in blocks before
anything is read; a paragraph or a line over local_inputs.MAX_TEXT_DOCUMENT_BYTES (256 MiB) is refused with one line
naming the file, the byte offset where that document starts and the fix. The bound is passed in small here: no test
writes gigabytes."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from ngpt_ds.data import local_inputs
from ngpt_ds.data.sources import CorpusSpec, open_corpus
from ngpt_ds.errors import NgptConfigError

BOUND = 64
"""MAX_TEXT_DOCUMENT_BYTES in these tests."""

# 'short one' (9 bytes), an empty line, then 10 lines of 9 bytes without an empty line between them (99 bytes with
# the 9 newlines between them), an empty line, 'last'.
LONG = "".join(f"line {i:04d}\n" for i in range(10))
TEXT = "short one\n\n" + LONG + "\nlast\n"
LONG_AT = len("short one\n\n")


def _fix(sample_by: str) -> str:
    return (
        "Put an empty line between its documents (a paragraph ends at two newlines in a row), or pass "
        "--text-sample-by line if each of its lines is a document"
        if sample_by == "paragraph"
        else "Break it into lines, one document each"
    )


def _refusal(file: Path, sample_by: str, offset: int, length: int, decompressed: str = "") -> str:
    return (
        f"--input file {str(file)!r}: the {sample_by} at byte {offset}{decompressed} is {length} bytes, longer than "
        f"the {BOUND} bytes a text document may be: datasets reads a {sample_by} whole and needs about 4 times its size in memory. {_fix(sample_by)}, or leave that file out"
    )


@pytest.fixture
def small_bound(monkeypatch):
    # raising=False: on the code before the fix the constant did not exist, and the test must reach its assertion.
    monkeypatch.setattr(local_inputs, "MAX_TEXT_DOCUMENT_BYTES", BOUND, raising=False)


def test_the_scan_finds_the_longest_paragraph_and_where_it_starts(tmp_path):
    """The bound passed in: the 99-byte paragraph at byte 11, in plain, CRLF and gzip-compressed text; a bound below
    it stops at its end (its whole length), one above it reads the file to its end."""
    plain = tmp_path / "a.txt"
    plain.write_bytes(TEXT.encode())
    assert local_inputs.longest_text_document(str(plain), "paragraph", 10_000) == (99, LONG_AT, True)
    assert local_inputs.longest_text_document(str(plain), "paragraph", 50) == (99, LONG_AT, True)
    assert local_inputs.longest_text_document(str(plain), "line", 10_000) == (9, 0, True)
    crlf = tmp_path / "b.txt"
    crlf.write_bytes(TEXT.replace("\n", "\r\n").encode())  # \r\n is one newline, as datasets reads text files
    assert local_inputs.longest_text_document(str(crlf), "paragraph", 10_000) == (108, LONG_AT + 2, True)
    packed = tmp_path / "c.txt.gz"
    packed.write_bytes(gzip.compress(TEXT.encode()))
    assert local_inputs.longest_text_document(str(packed), "paragraph", 10_000) == (99, LONG_AT, True)


def test_the_scan_stops_inside_a_paragraph_longer_than_the_bound(tmp_path, monkeypatch):
    """A paragraph that goes on past the bound is refused without reading the rest (a bomb is not inflated): with
    8-byte blocks and a bound of 40, the scan stops at the first block end past 40 bytes into it."""
    monkeypatch.setattr(local_inputs, "_SCAN_BYTES", 8)
    plain = tmp_path / "a.txt"
    plain.write_bytes(TEXT.encode())
    assert local_inputs.longest_text_document(str(plain), "paragraph", 40) == (45, LONG_AT, False)


@pytest.mark.parametrize("given", ["file", "glob", "folder"])
def test_a_paragraph_over_the_bound_is_refused_before_it_is_read(tmp_path, small_bound, given):
    """Before: the corpus was opened and read ('short one' first). Now: one error naming the file, the byte offset
    of the paragraph and the fix."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("a sound file\n", encoding="utf-8")
    bad = corpus / "b.txt"
    bad.write_text(TEXT, encoding="utf-8")
    inputs = {"file": str(bad), "glob": str(corpus / "*.txt"), "folder": str(corpus)}[given]
    with pytest.raises(NgptConfigError) as err:
        open_corpus(CorpusSpec(inputs=(inputs,)))
    assert str(err.value) == _refusal(bad, "paragraph", LONG_AT, 99)


def test_the_same_file_by_line_is_read_and_a_long_line_is_refused(tmp_path, small_bound):
    """The fix the refusal names works: by line, each line of the long paragraph is a document. A line over the
    bound is refused the same way, in a compressed file with the offset in the decompressed text."""
    good = tmp_path / "a.txt"
    good.write_text(TEXT, encoding="utf-8")
    corpus = open_corpus(CorpusSpec(inputs=(str(good),), text_sample_by="line"))
    assert list(corpus.texts()) == ["short one", *LONG.splitlines(), "last"]
    bad = tmp_path / "b.txt.gz"
    bad.write_bytes(gzip.compress(("x" * 10 + "\n" + "y" * 70 + "\nz\n").encode()))
    with pytest.raises(NgptConfigError) as err:
        open_corpus(CorpusSpec(inputs=(str(bad),), text_sample_by="line"))
    assert str(err.value) == _refusal(bad, "line", 11, 70, " of the decompressed text")


def test_a_whole_file_as_one_document_is_bounded_by_its_size(tmp_path, small_bound):
    """--text-sample-by document reads a file whole: within the bound by its size, not by its paragraphs (the 99-byte
    paragraph of TEXT is no matter); over it, refused (tests/test_reads35_text_scans.py)."""
    good = tmp_path / "a.txt"
    good.write_text(TEXT, encoding="utf-8")
    assert len(TEXT) > BOUND
    with pytest.raises(NgptConfigError, match=r"is 117 bytes, longer than the 64 bytes a text document may be"):
        open_corpus(CorpusSpec(inputs=(str(good),), text_sample_by="document"))
    local_inputs.MAX_TEXT_DOCUMENT_BYTES = len(TEXT)  # restored by small_bound's monkeypatch
    corpus = open_corpus(CorpusSpec(inputs=(str(good),), text_sample_by="document"))
    assert list(corpus.texts()) == [TEXT]
