"""A corpus error met while sentencepiece reads the tokenizer's training sample."""

from __future__ import annotations

from ngpt_ds.cli.prepare import main

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()


def _doc(i: int) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(20 + i % 5))


def test_a_file_that_cannot_be_read_while_the_tokenizer_trains_is_named(tmp_path, capsys):
    """Fault: a corpus error raised while sentencepiece read the training sample (a file of the glob that is not
    UTF-8, a text field holding numbers, a field missing from a later file) reached the user as
    'error: sentencepiece training failed:   .../ngpt_ds/data/sources.py(151): texts', the last line of the
    traceback sentencepiece made of it. Before: that line, with no file and no fix. Now: the corpus's own message,
    which names the file and the fix, as the same file gives when the tokenizer is not trained (--tokenizer)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("\n\n".join(_doc(i) for i in range(200)), encoding="utf-8")
    (corpus / "b.txt").write_bytes(b"good start\n\n\xff\xfe bad bytes\n")
    out = tmp_path / "ds"
    argv = ["--input", str(corpus / "*.txt"), "--out", str(out), "--vocab-size", "300", "--no-progress"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: text files {corpus / '*.txt'} (2 files), one document per paragraph: could not read "
        f"{corpus / 'b.txt'} (UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position 12: invalid "
        "start byte); fix or remove that file, or check that its extension matches its contents"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # nothing half-written


def test_a_vocab_error_after_a_full_sample_keeps_its_message(tmp_path, capsys):
    """The sample's stream, closed once --tokenizer-sample-chars are read, is no failure of the corpus: the vocab
    error sentencepiece gives after it is the one reported."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("\n\n".join(_doc(i) for i in range(200)), encoding="utf-8")
    argv = ["--input", str(corpus / "a.txt"), "--out", str(tmp_path / "ds"), "--vocab-size", "5000"]
    assert main([*argv, "--tokenizer-sample-chars", "3000", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --vocab-size 5000 is too large for this corpus: sentencepiece can make at most 359 pieces from the "
        "training sample; lower --vocab-size to <= 359, or give more text (--tokenizer-sample-chars, a larger corpus)"
    )
