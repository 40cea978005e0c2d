"""Fault: the check that no paragraph or line of a text --input is over the 256 MiB bound ran its quick scan
(fits_text_documents, bytes.rfind at reading speed) only on text whose newlines are all \\n: a file with one \\r (a
corpus of \\r\\n line ends, written on Windows) went through the regex scan over every end in Python
(longest_text_document, 31-46 MB/s by line), in every --num-shards part. Now lf_blocks makes each \\r that is part of
an end a \\n, keeping the length and every other byte, so the quick scan reads that text too, with the regex scan's
document boundaries byte for byte. The bound is passed in small here: no test writes hundreds of megabytes."""

from __future__ import annotations

import gzip
import io
import random

import pytest

from ngpt_ds.data import local_inputs
from ngpt_ds.data.sources import CorpusSpec, open_corpus
from ngpt_ds.errors import NgptConfigError

BOUND = 64
MODES = ("paragraph", "line")


def _texts(rng: random.Random) -> list[bytes]:
    """Texts of \\r\\n, \\n and lone \\r newlines, \\r\\n\\r\\n paragraph breaks, runs of both of every length."""
    texts = [
        b"\r",
        b"\r\n",
        b"\r\n\r\n",
        b"a\rb",
        b"a\r\nb",
        b"a\r\n\r\nb",
        b"a\n\rb",
        b"a\r\rb",
        b"\r\n\n\r",
        b"a\r\n",
    ]
    for _ in range(600):
        alphabet = rng.choice([b"abcdef\r\n", b"ab\r\n\r\n\n", b"abc\r", b"a\n\r\r\n", b"abcdefghijklmnop\r\n\n"])
        texts.append(bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 200))))
    return texts


def _ends(pattern, text: bytes) -> list[tuple[int, int]]:
    return [m.span() for m in pattern.finditer(text)]


def test_lf_blocks_keep_the_regex_scans_document_boundaries(monkeypatch):
    """The ends the regex scan finds in a text of \\r newlines (its second pattern) are, byte for byte, the runs of
    \\n the plain pattern finds in lf_blocks' bytes, for blocks of 1 to 12 bytes (an end cut by a block boundary,
    a \\r last in a block); the length is kept and no byte but a \\r is changed."""
    rng = random.Random(36)
    for text in _texts(rng):
        monkeypatch.setattr(local_inputs, "_SCAN_BYTES", rng.randint(1, 12))
        for mode in MODES:
            plain, any_newline = local_inputs._ENDS[mode]
            blocks = list(local_inputs.lf_blocks(io.BytesIO(text), mode))
            lf = b"".join(blocks)
            assert all(blocks) and len(lf) == len(text)
            assert all(a == b or a == ord("\r") for a, b in zip(text, lf)), (text, lf)
            assert _ends(plain, lf) == _ends(any_newline, text), (mode, text, lf)
    for mode, lf in [("paragraph", b"a\rb\r\nc\n\n\n\nd\re"), ("line", b"a\nb\n\nc\n\n\n\nd\ne")]:
        assert b"".join(local_inputs.lf_blocks(io.BytesIO(b"a\rb\r\nc\r\n\r\nd\re"), mode)) == lf


def test_the_quick_check_says_what_the_regex_scan_says_on_cr_newlines(tmp_path, monkeypatch):
    """Before: fits_text_documents answered False for any text holding a \\r (go to the regex scan), so 'fits' was
    not 'longest <= limit' for a short paragraph of \\r\\n lines. Now it is, on 600 random texts of \\r and \\n
    newlines with blocks of 1 to 40 bytes, plain and gzip-compressed, for limits around their documents' lengths."""
    rng = random.Random(3636)
    checked = {True: 0, False: 0}
    for index, text in enumerate(_texts(rng)):
        monkeypatch.setattr(local_inputs, "_SCAN_BYTES", rng.randint(1, 40))
        path = tmp_path / ("a.txt.gz" if index % 5 == 0 else "a.txt")
        path.write_bytes(gzip.compress(text) if path.suffix == ".gz" else text)
        for mode in MODES:
            longest = local_inputs.longest_text_document(str(path), mode, 1 << 30)[0]
            for limit in {0, max(0, longest - 1), longest, longest + 1, rng.randint(0, 100)}:
                fits = local_inputs.fits_text_documents(str(path), mode, limit)
                assert fits == (longest <= limit), (text, mode, limit, longest)
                checked[fits] += 1
    assert min(checked.values()) > 500  # both answers were tried often


def test_crlf_text_within_the_bound_is_not_scanned_by_the_regex(tmp_path, monkeypatch, regex_scans):
    """Before: a file of \\r\\n newlines (or one lone \\r) went through longest_text_document although every
    paragraph fits ('assert calls == []' saw ['a.txt', 'b.txt', 'c.txt']). Now only a file over the bound does,
    to name its paragraph; datasets reads the same documents as before."""
    monkeypatch.setattr(local_inputs, "MAX_TEXT_DOCUMENT_BYTES", BOUND)
    calls = regex_scans
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_bytes(b"one\r\ntwo\r\n\r\nthree\r\n")
    (corpus / "b.txt").write_bytes(b"four\r\n\r\n" + b"x" * 60 + b"\r\n\r\nfive\r\n")
    (corpus / "c.txt").write_bytes(b"six\rseven\n\neight\n")
    read = open_corpus(CorpusSpec(inputs=(str(corpus / "*.txt"),)))
    assert calls == []
    assert list(read.texts()) == ["one\ntwo", "three\n", "four", "x" * 60, "five\n", "six\nseven", "eight\n"]
    (corpus / "d.txt").write_bytes(b"nine\r\n\r\n" + b"y\r\n" * 30)
    with pytest.raises(NgptConfigError, match=r"'.*d\.txt': the paragraph at byte 8 is 90 bytes, longer than the 64"):
        open_corpus(CorpusSpec(inputs=(str(corpus / "*.txt"),)))
    assert calls == ["d.txt"]
