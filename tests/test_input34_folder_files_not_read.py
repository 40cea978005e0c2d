"""Fault: a corpus folder given as --input is read whole (README, Data) only where no file or subfolder in it is named
after a split. datasets reads `train.jsonl` alone of a folder holding `train.jsonl`, `test.jsonl` and `more.jsonl`
(`more.jsonl` is in no split, `test.jsonl` in split 'test'), and of a folder of .jsonl and .txt files the files of
the most common format alone; the rest was left out without a word, and the dataset prepared from part of the corpus.

Now one warning names the files not read for --split, each with why, and the fix (a glob reads every file it
matches; --split picks another split; files of another format are prepared on their own, since a glob of two formats
is refused). A folder datasets reads whole gets no warning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ngpt_ds.cli.prepare import main

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
SPLIT_FIX = (
    "Files and folders named after a split (train, test, validation, ...) make datasets read those alone; to read "
    "the others, pass them by a glob (a glob reads every file it matches), or --split NAME"
)
FORMAT_FIX = (
    "A folder is read in one format, its most common: convert the text files to json, or prepare them on their own"
)


def _jsonl(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    docs = (" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(20 + i % 5)) for i in range(n))
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")


def _prepare(inputs: str, out: Path, capsys) -> tuple[dict[str, int], str]:
    argv = ["--input", inputs, "--out", str(out), "--vocab-size", "300", "--val-fraction", "0.01", "--no-progress"]
    assert main(argv) == 0
    meta = json.loads((out / "meta.json").read_text())
    return {name: split["documents"] for name, split in meta["splits"].items()}, capsys.readouterr().err


def test_files_a_split_name_leaves_out_are_named(tmp_path, capsys):
    corpus = tmp_path / "c"
    _jsonl(corpus / "train.jsonl", 300)
    _jsonl(corpus / "test.jsonl", 100)
    _jsonl(corpus / "more.jsonl", 100)
    _jsonl(corpus / "sub" / "extra.jsonl", 100)
    (corpus / "notes.txt").write_text("a text file beside json files\n", encoding="utf-8")
    documents, err = _prepare(str(corpus), tmp_path / "ds", capsys)
    assert documents == {"train": 297, "validation": 3}  # train.jsonl alone, as before
    assert (
        f"--input {corpus}: datasets reads 1 json file of it for split 'train' and not 4 others: {corpus / 'more.jsonl'} "
        f"(in no split), {corpus / 'notes.txt'} (not json), {corpus / 'test.jsonl'} (split 'test') and 1 more. "
        f"{SPLIT_FIX}. {FORMAT_FIX}\n"
    ) in err, err[-3000:]
    assert err.count("datasets reads") == 1
    # The fix it names: a glob reads every json file.
    documents, err = _prepare(str(corpus / "**" / "*.jsonl"), tmp_path / "all", capsys)
    assert documents == {"train": 594, "validation": 6}
    assert "datasets reads" not in err


def test_files_of_another_format_are_named_with_their_own_fix(tmp_path, capsys):
    """No split name: datasets reads the json files, the most common format, and left the .txt file out."""
    corpus = tmp_path / "c"
    _jsonl(corpus / "a.jsonl", 200)
    _jsonl(corpus / "b.jsonl", 100)
    (corpus / "c.txt").write_text("documents of a text file\n\nnot read\n", encoding="utf-8")
    documents, err = _prepare(str(corpus), tmp_path / "ds", capsys)
    assert documents == {"train": 297, "validation": 3}
    assert (
        f"--input {corpus}: datasets reads 2 json files of it for split 'train' and not 1 other: {corpus / 'c.txt'} "
        f"(not json). {FORMAT_FIX}\n"
    ) in err, err[-3000:]


@pytest.mark.parametrize("given", ["path", "link", "relative"])
def test_a_folder_read_whole_gets_no_warning(tmp_path, capsys, monkeypatch, given):
    """Given by a link or a relative path too (datasets names the files under the folder's real path)."""
    corpus = tmp_path / "c"
    _jsonl(corpus / "a.jsonl", 200)
    _jsonl(corpus / "sub" / "b.jsonl", 100)
    (tmp_path / "link").symlink_to("c")
    monkeypatch.chdir(tmp_path)
    inputs = {"path": str(corpus), "link": str(tmp_path / "link"), "relative": "c"}[given]
    documents, err = _prepare(inputs, tmp_path / "ds", capsys)
    assert documents == {"train": 297, "validation": 3}
    assert "datasets reads" not in err and "not read" not in err
