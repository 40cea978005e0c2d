"""Fault: a .txt.gz of 2 MB that inflates to one 2 GiB paragraph (a gzip bomb; datasets' text builder reads up to a
blank line into memory, about 4 times the text) stopped ngpt-prepare under a 4 GiB address-space limit with a
MemoryError traceback ending in datasets/packaged_modules/text/text.py "batch += f.readline()", exit 1. It is now one
`error:` line naming the file, what it holds and the fix, exit 2, and nothing is written to --out.

A paragraph or a line over 256 MiB is now refused before it is read (tests/test_input34_text_document_bound.py), and
so is a file over 256 MiB read as one document (--text-sample-by document, tests/test_reads35_text_scans.py): this
bomb, counted no further than 272 MiB of its 2 GiB, gets that one line instead of the out-of-memory one."""

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
        f"error: --input file {str(bomb)!r} is at least 272 MiB decompressed, longer than the 256 MiB a text "
        "document may be: with --text-sample-by document the whole file is one document, which datasets reads whole "
        "and needs about 4 times its size in memory. Pass --text-sample-by paragraph (documents end at an empty line) "
        "or line, split it into files of one document each, or leave that file out"
    ]
    assert not out.exists()
