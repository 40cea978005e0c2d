"""A preparation killed mid-write (SIGKILL, a lost node, a job's time limit) leaves no hidden staging folder
for good: the next preparation of that folder removes it, and leaves a live one's alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset
from ngpt_ds.data.staging import OWNER_FILE, remove_staging, staging_dir

REPO = Path(__file__).parents[1]


def _corpus(path: Path, docs: int) -> Path:
    rows = (json.dumps({"text": f"document {i} " + "some words to tokenize here " * 20}) for i in range(docs))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _prepare(corpus: Path, out: Path, **kw) -> Path:
    kw.setdefault("vocab_size", 300)
    return prepare_dataset(PrepareConfig(inputs=(str(corpus),), out=out, workers=1, progress=False, **kw))


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_preparation_killed_mid_write_leaves_nothing_after_the_next(tmp_path):
    """The staging folder of a SIGKILLed preparation, shards and all, stayed beside --out hidden forever, and
    each rerun killed the same way added one more; the next preparation of the folder now removes it."""
    tok = _prepare(_corpus(tmp_path / "small.jsonl", 60), tmp_path / "tok_ds") / "tokenizer.model"
    corpus = _corpus(tmp_path / "big.jsonl", 30_000)
    out = tmp_path / "sub" / "ds"
    cmd = [sys.executable, str(REPO / "launch" / "prepare_data.py"), "--input", str(corpus), "--out", str(out)]
    cmd += ["--tokenizer", str(tok), "--workers", "1", "--shard-tokens", "2000", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(out.parent.glob(".ds.partial-*/train_000001.bin")):
            assert proc.poll() is None, "the preparation ended before it was killed"
            assert time.monotonic() < deadline, "no shard written in 120 s"
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    left = _hidden(out.parent)
    assert len(left) == 1 and left[0].startswith(".ds.partial-")
    assert not out.exists()

    _prepare(_corpus(tmp_path / "again.jsonl", 60), out, tokenizer=tok, vocab_size=None)
    assert _hidden(out.parent) == []
    assert sorted(p.name for p in out.iterdir()) == [
        "meta.json",
        "tokenizer.model",
        "train_000000.bin",
        "validation_000000.bin",
    ]


def test_the_staging_folder_of_a_preparation_under_way_is_left_alone(tmp_path):
    out = tmp_path / "ds"
    code = (
        "import sys, time; from pathlib import Path; from ngpt_ds.data.staging import staging_dir; "
        f"s = staging_dir(Path({str(out)!r})); print(s, flush=True); time.sleep(60)"
    )
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        theirs = Path(other.stdout.readline().strip())
        assert (theirs / OWNER_FILE).is_file()
        mine = staging_dir(out)
        assert theirs.is_dir() and (theirs / OWNER_FILE).is_file()
        assert _hidden(tmp_path) == sorted([theirs.name, mine.name])
    finally:
        other.kill()
        other.wait()
    # Its owner gone, its folder is abandoned: the next staging folder of `out` removes it.
    again = staging_dir(out)
    assert _hidden(tmp_path) == sorted([mine.name, again.name])
    remove_staging(mine)
    remove_staging(again)
    assert _hidden(tmp_path) == []
