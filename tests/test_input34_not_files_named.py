"""Fault: what a corpus folder or a glob holds that is not a file was left out without a word. A named pipe
`b.jsonl` beside `a.jsonl` (a stream meant as part of the corpus), a socket, or a link to a file on a disk this node
has not mounted: datasets leaves them out of a folder it reads, and local_inputs.resolve_files out of a glob
(`os.path.isfile`), so the corpus was prepared without their documents while the user took the whole folder as read.
A named pipe given as --input itself is refused (tests/test_red32_input_special_files.py).

Now one warning names them (three at most, then a count) and why they are not read; the folder's files are prepared
as before (a pipe or socket of another program may well sit in a folder of documents)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from ngpt_ds.cli.prepare import main

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
WHY = (
    "A corpus is read several times (the tokenizer's sample, then every document), which only a file allows: save "
    "a stream to a file, and make a link lead to one, to have it read\n"
)


def _doc(i: int) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(20 + i % 5))


def _corpus(tmp_path: Path) -> tuple[Path, socket.socket]:
    """a.jsonl (300 documents), and beside it a named pipe, a link to nothing, a socket and a link loop; hidden
    entries, which datasets skips as it skips hidden files, are not named."""
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text("".join(json.dumps({"text": _doc(i)}) + "\n" for i in range(300)), "utf-8")
    os.mkfifo(corpus / "b.jsonl")
    (corpus / "c.jsonl").symlink_to(tmp_path / "unmounted" / "c.jsonl")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(corpus / "d.jsonl"))
    (corpus / "e.jsonl").symlink_to("e.jsonl")
    os.mkfifo(corpus / ".hidden.jsonl")
    return corpus, sock


@pytest.mark.parametrize("given", ["folder", "glob"])
def test_entries_that_are_not_files_are_named_once(tmp_path, capsys, given):
    corpus, sock = _corpus(tmp_path)
    out = tmp_path / "ds"
    inputs = str(corpus) if given == "folder" else str(corpus / "*.jsonl")
    argv = ["--input", inputs, "--out", str(out), "--vocab-size", "300", "--val-fraction", "0.01", "--no-progress"]
    try:
        assert main(argv) == 0
    finally:
        sock.close()
    err = capsys.readouterr().err
    where = f"--input {corpus} holds" if given == "folder" else f"--input {inputs!r} matches"
    warning = (
        f"{where} 4 entries that are not a file, not read: {corpus / 'b.jsonl'} (a named pipe (FIFO)), "
        f"{corpus / 'c.jsonl'} (a link that leads to no file), {corpus / 'd.jsonl'} (a socket) and 1 more. " + WHY
    )
    assert warning in err, err[-3000:]
    assert err.count("not a file, not read") == 1
    meta = json.loads((out / "meta.json").read_text())
    assert {name: split["documents"] for name, split in meta["splits"].items()} == {"train": 297, "validation": 3}


def test_one_entry_is_named_alone(tmp_path, capsys):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text("".join(json.dumps({"text": _doc(i)}) + "\n" for i in range(300)), "utf-8")
    os.mkfifo(corpus / "b.jsonl")
    argv = ["--input", str(corpus), "--out", str(tmp_path / "ds"), "--vocab-size", "300", "--no-progress"]
    assert main(argv) == 0
    assert (
        f"--input {corpus} holds 1 entry that is not a file, not read: {corpus / 'b.jsonl'} (a named pipe (FIFO)). "
        + WHY
        in capsys.readouterr().err
    )
