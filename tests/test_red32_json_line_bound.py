"""Fault: datasets' json reader reads a whole line of a .json/.jsonl --input into memory and parses it in blocks it
keeps doubling, about 13 times the line (a 100 MB line: 1.28 GB). A 1 MB .jsonl.gz that inflates to one 1 GiB line
(a gzip bomb) made ngpt-prepare die under an 8 GiB address-space limit (SIGSEGV, or a MemoryError traceback; without
a limit it needs about 13 GiB, and a 2 GB line 26 GB: the out-of-memory killer), given by name or in a corpus folder.

Each json file (named, matched by a glob, or in a corpus folder of json files) is now scanned in 16 MiB blocks
before anything is read; a line over local_inputs.MAX_JSON_LINE_BYTES (256 MiB) is refused with one line naming
the file, the line and the fix, and the scan of a bomb stops at the first block past the bound."""

from __future__ import annotations

import gzip
import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from ngpt_ds.data import local_inputs
from ngpt_ds.data.sources import CorpusSpec, open_corpus
from ngpt_ds.errors import NgptConfigError

REPO = Path(__file__).parents[1]
LIMIT = 8 << 30  # address space of the command: torch and datasets load in it, the old code's read did not


def _bomb(path: Path) -> Path:
    """A .jsonl.gz of about 1 MB: a short row, then one row whose text is 1 GiB of 'a' (no newline inside)."""
    with gzip.open(path, "wb", compresslevel=9) as g:
        g.write(b'{"text": "a short first document"}\n{"text": "')
        block = b"a" * (16 << 20)
        for _ in range(64):
            g.write(block)
        g.write(b'"}\n')
    return path


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


@pytest.mark.parametrize("given", ["file", "folder"])
def test_a_gzip_bomb_of_one_long_json_line_is_refused_before_it_is_read(tmp_path, given):
    """file: the bomb given by name; folder: in a corpus folder beside a sound file (datasets reads it whole)."""
    (tmp_path / "corpus").mkdir()
    bomb = _bomb(tmp_path / "corpus" / "bomb.jsonl.gz")
    assert bomb.stat().st_size < 2 << 20
    (tmp_path / "corpus" / "a.jsonl").write_text('{"text": "a sound file"}\n', encoding="utf-8")
    given_as = str(bomb) if given == "file" else str(tmp_path / "corpus")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch" / "prepare_data.py"), "--input", given_as, "--out", str(out)]
        + ["--vocab-size", "300", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_memory,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert errors == [
        f"error: --input file {str(bomb)!r}: line 2 is at least 272 MiB (uncompressed), longer than the 256 MiB a "
        "json line may be: datasets reads a line whole and needs about 13 times its size in memory. Split that "
        "document over several rows, or give it as a .txt file whose paragraphs (cut at empty lines) are each under "
        "256 MiB"
    ]
    assert not out.exists()


def test_the_scan_finds_the_longest_line_and_its_number(tmp_path):
    rows = ["x" * 10, "y" * 300, "z" * 20]
    plain = tmp_path / "a.jsonl"
    plain.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows), encoding="utf-8")
    assert local_inputs.longest_line(str(plain)) == (len(json.dumps({"text": "y" * 300})), 2, True)
    packed = tmp_path / "b.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()[:-1]))  # the last line without its newline
    assert local_inputs.longest_line(str(packed)) == (len(json.dumps({"text": "y" * 300})), 2, True)
    last = tmp_path / "c.jsonl"
    last.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"text": "b" * 50}), encoding="utf-8")
    assert local_inputs.longest_line(str(last)) == (len(json.dumps({"text": "b" * 50})), 2, True)


@pytest.mark.parametrize("over", [0, 1])
def test_a_line_at_the_bound_is_read_and_one_byte_more_is_refused(tmp_path, monkeypatch, over):
    line = json.dumps({"text": "w " * 60})
    monkeypatch.setattr(local_inputs, "MAX_JSON_LINE_BYTES", len(line) - over)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "first"}) + "\n" + line + "\n", encoding="utf-8")
    if not over:
        assert list(open_corpus(CorpusSpec(inputs=(str(corpus),))).texts()) == ["first", "w " * 60]
        return
    with pytest.raises(NgptConfigError) as err:
        open_corpus(CorpusSpec(inputs=(str(corpus),)))
    assert str(err.value).startswith(f"--input file {str(corpus)!r}: line 2 is 0 MiB (uncompressed), longer than")
