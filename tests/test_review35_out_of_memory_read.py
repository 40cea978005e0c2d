"""The out-of-memory line of a document too large to read is tested again (helper review35, session 35).

416d200 bounded --text-sample-by document at 256 MiB and changed tests/test_red32_out_of_memory_read.py, the one test
of sources.Corpus.texts' MemoryError handler, to expect the new bound's refusal: its 2 GiB bomb no longer reaches the
read, so the handler ("ran out of memory reading ...: it holds a document ... too large to read whole in this process's
memory", exit 2, no traceback) was left untested, though a document within the bound still meets it in a process with
less memory than about 4 times the document. Here the bound is lifted in the child process, so the same bomb is read
as red32's test read it before 416d200, under the same 4 GiB address-space limit.
"""

from __future__ import annotations

import gzip
import re
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[1]
LIMIT = 4 << 30
CHILD = """import sys
from ngpt_ds.data import local_inputs
local_inputs.MAX_TEXT_DOCUMENT_BYTES = 1 << 62  # the bound lifted: the read itself meets the memory limit
from ngpt_ds.cli.prepare import main
sys.argv = ["prepare_data.py", *sys.argv[1:]]
sys.exit(main())
"""


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def test_a_document_within_no_bound_but_too_large_for_the_memory_is_one_line(tmp_path):
    bomb = tmp_path / "bomb.txt.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as g:
        block = b"a" * (16 << 20)
        for _ in range(128):  # 2 GiB of one document
            g.write(block)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, "--input", str(bomb), "--out", str(out)]
        + ["--vocab-size", "300", "--no-progress", "--text-sample-by", "document"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        preexec_fn=_limit_memory,
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(
        f"error: text files {bomb} (1 file), one document per file: ran out of memory reading {bomb}: it holds a "
        "document (a line, a paragraph without a blank line, or with --text-sample-by document a whole file) too "
        "large to read whole in this process's memory; split it into smaller documents, or leave that file out; "
    ), line
    # The limit it ran under is named (lead36): under `ulimit -v` a folder of twenty 15 kB files had been told it
    # held a document too large to read. Old code: the line ended at 'leave that file out'.
    mapped = r"\d+(\.\d)? (GiB|MiB)"
    assert re.search(
        rf"; this process runs under an address-space limit \(`ulimit -v`\) of 4\.0 GiB, {mapped} of it mapped, "
        r"which may be what ran out\. Raise the limit \(`ulimit -v unlimited`, or a few GiB more, in the shell or "
        r"job script before ngpt-prepare\)$",
        line,
    ), line
    assert not out.exists()
