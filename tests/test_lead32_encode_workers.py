"""Faults (session 32) of ngpt-prepare's tokenizer worker processes (ngpt_ds/data/encode.py), which ran in a
multiprocessing.Pool:

- a worker that could not load the tokenizer (a file sentencepiece refuses, or one that became unreadable after the
  parent checked it) failed in the Pool's initializer, and the Pool started a new worker that failed the same way,
  forever: the preparation printed a traceback per worker and never ended;
- a worker killed while it encoded a batch (the out-of-memory killer, a crash in sentencepiece) was replaced, and its
  task was never answered: the preparation waited forever.

Each case runs in a subprocess with a time limit, as the old code never returned.
"""

import subprocess
import sys

from conftest import cpu_env

LIMIT_S = 120


def run_encoding(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], env=cpu_env(), capture_output=True, text=True, timeout=LIMIT_S
    )


CANNOT_LOAD = """
import sys
from ngpt_ds.data.encode import encode_in_order
from ngpt_ds.errors import NgptConfigError
try:
    list(encode_in_order([(i, ["some text"]) for i in range(4)], sys.argv[1], workers=2))
except NgptConfigError as err:
    print(err)
"""


def test_workers_that_cannot_load_the_tokenizer_end_the_preparation_with_why(tmp_path):
    not_a_model = tmp_path / "tokenizer.model"
    not_a_model.write_text("not a sentencepiece model\n")
    result = run_encoding(CANNOT_LOAD, not_a_model)  # the old Pool: subprocess.TimeoutExpired
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == (
        f"tokenizer {not_a_model}: the worker processes could not load it (RuntimeError: INTERNAL: could not parse "
        f"ModelProto from {not_a_model})"
    )


KILLED = """
import multiprocessing, os, signal, sys, time
from ngpt_ds.data.encode import encode_in_order
from ngpt_ds.errors import NgptConfigError

def batches():
    yield 0, ["In the beginning God created the heaven and the earth. " * 20] * 20000  # busy for seconds
    time.sleep(1.0)
    for child in multiprocessing.active_children():  # the pool's workers, one of them mid-batch
        os.kill(child.pid, signal.SIGKILL)
    yield 1, ["more text"]

try:
    done = list(encode_in_order(batches(), sys.argv[1], workers=2))
    print("finished", len(done))
except NgptConfigError as err:
    print(err)
"""


def test_a_worker_killed_mid_batch_ends_the_preparation_with_why(tiny_dataset):
    model = tiny_dataset / "tokenizer.model"
    result = run_encoding(KILLED, model)  # the old Pool: subprocess.TimeoutExpired
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == (
        "a tokenizer worker process ended abruptly (killed: by the out-of-memory killer, say, which the kernel log "
        f"names; or a crash in sentencepiece on {model}). Run the preparation again, with fewer --workers where "
        "memory is short"
    )


def test_the_pool_still_encodes_as_one_process_does(tiny_dataset):
    from ngpt_ds.data.encode import encode_in_order

    model = str(tiny_dataset / "tokenizer.model")
    batches = [(i, [f"line {i} of the text", "and God saw the light, that it was good"] * (i + 1)) for i in range(6)]
    pooled = list(encode_in_order(batches, model, workers=2))
    alone = list(encode_in_order(batches, model, workers=1))
    assert [tag for tag, _, _ in pooled] == list(range(6))
    for (_, ids_a, lengths_a), (_, ids_b, lengths_b) in zip(pooled, alone, strict=True):
        assert ids_a.tolist() == ids_b.tolist() and lengths_a.tolist() == lengths_b.tolist()
        assert len(ids_a) > 0
