"""A training run pointed at a dataset that is not there yet because its preparation is still running (a
training job submitted with its preparation job) or was killed halfway (SIGKILL, a node lost, a time limit):
both ranks stop at startup with one line that says which, and its fix.

Fault: both said "data dir DIR does not exist; prepare it with `python launch/prepare_data.py --input CORPUS
--out DIR`": told to prepare a dataset being prepared (a second preparation of it), or, after the kill, with no
word that the hidden folder beside it is the killed preparation's leftover (a whole corpus of shards)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

from conftest import REPO, start_ranks, tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml


def _corpus(path: Path) -> Path:
    rows = (json.dumps({"text": f"document {i} " + "some words to tokenize here and there " * 40}) for i in range(400))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _start_preparing(corpus: Path, out: Path, tokenizer: Path) -> tuple[subprocess.Popen, Path]:
    """launch/prepare_data.py into `out`, and its staging folder once it has one (locked, writing shards)."""
    proc = subprocess.Popen(
        [sys.executable, REPO / "launch/prepare_data.py", "--input", corpus, "--tokenizer", tokenizer, "--out", out]
        + ["--workers", "1", "--no-progress"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    while proc.poll() is None:
        staging = [p for p in out.parent.glob(f".{out.name}.partial-*") if (p / ".owner").is_file()]
        if staging and (staging[0] / ".owner").read_text():  # locked and named: the preparation is under way
            return proc, staging[0]
    raise AssertionError(f"the preparation ended before it was seen writing: {proc.communicate()[0][-3000:]}")


def _train(tmp_path: Path, data: Path) -> list[tuple[int, str]]:
    yaml = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(2))
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=2, accum=1)
    ranks = start_ranks([REPO / "launch/train.py", *train_flags(yaml, ds, data, tmp_path / "run")])
    return [(rank.returncode, out + err) for rank in ranks for out, err in [rank.communicate(timeout=240)]]


def test_a_run_started_while_its_data_is_prepared_is_told_to_wait(tmp_path, tiny_dataset):
    corpus, data = _corpus(tmp_path / "corpus.jsonl"), tmp_path / "data"
    prep, staging = _start_preparing(corpus, data, tiny_dataset / "tokenizer.model")
    prep.send_signal(signal.SIGSTOP)  # paused mid-write, its lock held: under way for as long as the runs start
    try:
        results = _train(tmp_path, data)
        expected = (
            f"error: dataset {data} does not exist, but a preparation of it is under way (pid {prep.pid} on "
            f"{socket.gethostname()}), writing {staging.name} beside it: wait for it to finish (the "
            "folder appears only when complete), then start again"
        )
        for code, said in results:
            assert code == 2 and "Traceback" not in said, said[-3000:]
            assert said.strip().splitlines()[-1] == expected, said[-3000:]
    finally:
        prep.kill()
        prep.wait()


def test_a_run_pointed_at_a_preparation_killed_halfway_is_told_to_run_it_again(tmp_path, tiny_dataset):
    corpus, data = _corpus(tmp_path / "corpus.jsonl"), tmp_path / "data"
    prep, staging = _start_preparing(corpus, data, tiny_dataset / "tokenizer.model")
    prep.send_signal(signal.SIGKILL)
    prep.wait()
    assert not data.exists() and staging.is_dir()  # never a half dataset under the name
    expected = (
        f"error: dataset {data} does not exist, but {staging.name} beside it is what an interrupted preparation of "
        "it left (it never finished): run that preparation again (it removes the leftover first)"
    )
    for code, said in _train(tmp_path, data):
        assert code == 2 and "Traceback" not in said, said[-3000:]
        assert said.strip().splitlines()[-1] == expected, said[-3000:]
