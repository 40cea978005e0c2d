"""Fault: a .txt.gz of 2 MB that inflates to one 2 GiB paragraph (a gzip bomb; datasets' text builder reads up to a
blank line into memory, about 4 times the text) stopped ngpt-prepare under a 4 GiB address-space limit with a
MemoryError traceback ending in datasets/packaged_modules/text/text.py "batch += f.readline()", exit 1. It is now one
`error:` line naming the file, what it holds and the fix, exit 2, and nothing is written to --out.

A paragraph or a line over 256 MiB is now refused before it is read (tests/test_input34_text_document_bound.py); the
file read as one document (--text-sample-by document, unbounded) still meets the memory limit here."""

from __future__ import annotations

import gzip
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[1]
LIMIT = 4 << 30


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def test_a_document_too_large_for_the_memory_is_named_not_a_traceback(tmp_path):
    bomb = tmp_path / "bomb.txt.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as g:
        block = b"a" * (16 << 20)
        for _ in range(128):
            g.write(block)
    assert bomb.stat().st_size < 3 << 20
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch" / "prepare_data.py"), "--input", str(bomb), "--out", str(out)]
        + ["--vocab-size", "300", "--no-progress", "--text-sample-by", "document"],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_memory,
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: text files {bomb} (1 file), one document per file: ran out of memory reading {bomb}: it holds a "
        "document (a line, a paragraph without a blank line, or with --text-sample-by document a whole file) too "
        "large to read whole in this process's memory; split it into smaller documents, or leave that file out"
    ]
    assert not out.exists()
