"""A shard truncated or rewritten in place while a run reads it (`cp fresh/train_000000.bin data/` or `rsync
--inplace` into the dataset of a running job; `cp -r other/. data/` at the same sizes): the run stops with one
message naming the shard, on every rank. Replacing files by renaming a complete copy into place (the way
prepare_data.py publishes) is read as before: tests/test_data_replaced_while_training.py."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_data_loader import T, write_synthetic

from ngpt_ds.data.loader import TokenWindowLoader
from ngpt_ds.data.shards import load_dataset_meta
from ngpt_ds.data.windows import DeferredFaults
from ngpt_ds.errors import NgptConfigError

from conftest import REPO, cpu_env, start_ranks, tiny_ngpt, tiny_train, write_ds_config, write_yaml

SHARD_TOKENS = 40_000
SHARD = "train_000000.bin"
MESSAGE = (
    "dataset {data}: shard {shard} was truncated or rewritten in place while the run read it ({seen}): replace "
    "dataset files by renaming a complete copy into place, never by copying over them"
)
TRUNCATED = "it holds 0 of its {size} bytes now"
REWRITTEN = "its modification time changed since the run opened it"


def _dataset(tmp_path: Path) -> Path:
    """One training shard of SHARD_TOKENS uint16 tokens, written an hour ago (as a dataset in use was)."""
    data = write_synthetic(tmp_path / "ds", train=(SHARD_TOKENS,), val=(90,))
    an_hour_ago = time.time() - 3600
    os.utime(data / SHARD, (an_hour_ago, an_hour_ago))
    return data


# In a child process: on the old code the second batch killed the reader with SIGBUS.
READ_AFTER_TRUNCATION = """
import os, sys
from ngpt_ds.data.loader import TokenWindowLoader
from ngpt_ds.data.windows import DeferredFaults
from ngpt_ds.errors import NgptConfigError
data, deferred = sys.argv[1], sys.argv[2] == "deferred"
faults = DeferredFaults() if deferred else None
loader = TokenWindowLoader(data, "train", 8, 4, 0, 1, seed=7, faults=faults)
loader.next_batch()
os.truncate(os.path.join(data, "train_000000.bin"), 0)
try:
    inputs, targets = loader.next_batch()
except NgptConfigError as e:
    print("error:", e)
    sys.exit(2)
print("read", int(inputs.abs().sum()) + int(targets.abs().sum()))
print("recorded:", faults.first if faults else None)
"""


def _read_after_truncation(data: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", READ_AFTER_TRUNCATION, str(data), mode],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=cpu_env(),
        timeout=120,
    )


def test_a_shard_truncated_in_place_is_an_error_naming_it(tmp_path):
    """Fault: windows were read through np.memmap, so the first read past the truncated shard's new end killed
    the process with SIGBUS (exit status -7), naming nothing. Now a short read raises the one message."""
    data = _dataset(tmp_path)
    proc = _read_after_truncation(data, "raise")
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert proc.stdout == "error: " + MESSAGE.format(data=data, shard=SHARD, seen=TRUNCATED.format(size=80_000)) + "\n"
    assert "Traceback" not in proc.stderr


def test_a_shard_truncated_in_place_is_recorded_for_every_rank_to_stop(tmp_path):
    """With the trainer's DeferredFaults (more than one rank) the read is recorded, not raised, and the batch
    comes back as id 0 where nothing was read, so that it can go through the step's collectives before every
    rank stops. Fault: SIGBUS, as above."""
    data = _dataset(tmp_path)
    proc = _read_after_truncation(data, "deferred")
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert proc.stdout.splitlines() == [
        "read 0",
        "recorded: " + MESSAGE.format(data=data, shard=SHARD, seen=TRUNCATED.format(size=80_000)),
    ]


def test_a_shard_rewritten_in_place_at_its_size_is_an_error_naming_it(tmp_path):
    """Fault: a shard overwritten in place with as many other tokens was read silently (the first tokens of the
    second batch: 5 5 5 5 where 7984 30856 ... were due). Now fstat's modification time, compared once per
    batch with the one when the shard was opened, stops the read."""
    data = _dataset(tmp_path)
    loader = TokenWindowLoader(data, "train", T, 4, 0, 1, seed=7)
    loader.next_batch()
    with open(data / SHARD, "r+b") as f:
        f.write(np.full(SHARD_TOKENS, 5, dtype="<u2").tobytes())
    with pytest.raises(NgptConfigError) as raised:
        loader.next_batch()
    assert str(raised.value) == MESSAGE.format(data=data, shard=SHARD, seen=REWRITTEN)

    faults = DeferredFaults()
    deferred = TokenWindowLoader(data, "train", T, 4, 0, 1, seed=7, faults=faults)  # opened on the new contents
    deferred.next_batch()
    os.utime(data / SHARD, ns=(0, 10**9))
    deferred.next_batch()
    assert faults.first == MESSAGE.format(data=data, shard=SHARD, seen=REWRITTEN)


def test_reading_a_shard_unchanged_since_it_was_opened_records_nothing(tmp_path):
    """Every batch of a shard that nobody rewrites reads the tokens written (window w of shard 0 holds the
    consecutive ids w*T .. w*T+T), with nothing recorded."""
    data = _dataset(tmp_path)
    faults = DeferredFaults()
    loader = TokenWindowLoader(data, "train", T, 4, 0, 1, seed=7, faults=faults)
    for _ in range(50):
        inputs, targets = loader.next_batch()
        first = inputs[:, :1].numpy()
        assert (first % T == 0).all()
        assert np.array_equal(inputs.numpy(), first + np.arange(T))
        assert np.array_equal(targets.numpy(), first + 1 + np.arange(T))
    assert faults.first is None


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc/self/fd")
def test_the_loader_holds_one_descriptor_per_shard_with_windows_and_closes_them_with_it(tmp_path):
    """As many descriptors as the mappings held (one per shard that holds a window), released with the loader:
    the trainer indexes each split twice, and tests make hundreds of loaders."""
    data = write_synthetic(tmp_path / "ds", train=(100, 5, 100, 100), val=(90,))  # 5 tokens: no window of 9
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    loader = TokenWindowLoader(data, "train", T, 2, 0, 1, seed=0)
    loader.next_batch()
    assert len(os.listdir("/proc/self/fd")) - before == 3
    del loader
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_shard_truncated_in_place_mid_run_stops_both_ranks_with_one_message_naming_it(tiny_dataset, tmp_path):
    """Fault: `cp fresh/train_000000.bin data/` into the dataset of a 2-rank run truncated the shard, and both
    ranks died of SIGBUS in the loader (exit status -7, no message). Now the read that comes back short is
    recorded (ngpt_ds.data.windows.DeferredFaults), flagged in the step's all-reduce, and both ranks stop with
    the one message naming the shard, exit status 2, nothing saved."""
    data = Path(shutil.copytree(tiny_dataset, tmp_path / "data"))
    shards = load_dataset_meta(data).splits["train"].shards
    assert len(shards) == 1, "both ranks read the one training shard"
    yaml = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(4, checkpoint_interval=1))
    ds = write_ds_config(tmp_path / "ds.json", stage=2, bf16=False, micro=2, accum=1)
    out = tmp_path / "out"
    worker = REPO / "tests/workers/shard_truncated_worker.py"
    args = ["--config", yaml, "--deepspeed_config", ds, "--out", out, "--data", data, "--no-progress"]
    ranks = start_ranks([worker, 0, data / shards[0].file, "--", *args])
    outputs = [(rank, *rank.communicate(timeout=240)) for rank in ranks]
    seen = TRUNCATED.format(size=shards[0].tokens * 2)
    expected = "error: " + MESSAGE.format(data=data, shard=shards[0].file, seen=seen) + " (read at step 1; "
    for rank, stdout, stderr in outputs:
        both = stdout + stderr
        assert rank.returncode == 2, (rank.returncode, both[-3000:])
        assert "Traceback" not in both and "Connection closed" not in both, both
        assert expected in stderr, both
    assert not list((out / "checkpoints").glob("step_*"))
