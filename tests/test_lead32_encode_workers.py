"""Faults (session 32) of ngpt-prepare's tokenizer worker processes (ngpt_ds/data/encode.py), which ran in a
multiprocessing.Pool:

- a worker that could not load the tokenizer (a file sentencepiece refuses, or one that became unreadable after the
  parent checked it) failed in the Pool's initializer, and the Pool started a new worker that failed the same way,
  forever: the preparation printed a traceback per worker and never ended;
- a worker killed while it encoded a batch (the out-of-memory killer, a crash in sentencepiece) was replaced, and its
  task was never answered: the preparation waited forever.

And of the ProcessPoolExecutor that replaced it (session 33; CI run of stop 45 timed out here):

- a worker started by a submit while the executor was handling a killed worker was missed by the executor's
  termination, which then waited for it forever (CPython 3.11). Workers are now all started before the first batch;
- a worker whose parent was killed outright (SIGKILL, the out-of-memory killer) waited on its task queue forever.

Each case runs in a subprocess with a time limit, as the old code never returned.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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

def batches(kill_after):
    yield 0, ["In the beginning God created the heaven and the earth. " * 20] * 20000  # busy for seconds
    time.sleep(kill_after)
    for child in multiprocessing.active_children():  # the pool's workers, one of them mid-batch
        os.kill(child.pid, signal.SIGKILL)
    yield 1, ["more text"]

# A kill at once raced the executor's start of a worker for batch 1: the old code hung in about 2 runs of 3.
for kill_after in (0.0, 0.0, 0.0, 0.05, 0.3, 1.0):
    try:
        done = list(encode_in_order(batches(kill_after), sys.argv[1], workers=2))
        print("finished", len(done))
    except NgptConfigError as err:
        print(err)
"""


def test_a_worker_killed_mid_batch_ends_the_preparation_with_why(tiny_dataset):
    model = tiny_dataset / "tokenizer.model"
    result = run_encoding(KILLED, model)  # the Pool, and then the executor's race: subprocess.TimeoutExpired
    assert result.returncode == 0, result.stderr[-3000:]
    why = (
        "a tokenizer worker process ended abruptly (killed: by the out-of-memory killer, say, which the kernel log "
        f"names; or a crash in sentencepiece on {model}). Run the preparation again, with fewer --workers where "
        "memory is short"
    )
    assert result.stdout.splitlines() == [why] * 6


ORPHANED = """
import multiprocessing, sys, time
from ngpt_ds.data.encode import encode_in_order

def batches():
    yield 0, ["some text"]
    print(" ".join(str(child.pid) for child in multiprocessing.active_children()), flush=True)
    time.sleep(600)

list(encode_in_order(batches(), sys.argv[1], workers=2))
"""


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie left unreaped by a container's init does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_the_workers_of_a_preparation_killed_outright_exit(tiny_dataset):
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHANED, str(tiny_dataset / "tokenizer.model")],
        env=cpu_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    workers: list[int] = []
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert workers and all(map(alive, workers))
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + LIMIT_S
        while any(map(alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [pid for pid in workers if alive(pid)]
        assert left == [], f"worker processes {left} outlived their killed parent"  # the old code: both, forever
        assert len(workers) == 2  # each started before the first batch (the old code: one, the second on demand)
    finally:
        parent.kill()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


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
