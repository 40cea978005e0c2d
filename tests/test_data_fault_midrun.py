"""A token id beyond the vocabulary that only ONE data-parallel rank reads, in the middle of a run (a shard
damaged after startup, after the sampled hash check, where only that rank reads): every rank must stop
with that rank's message, and the newest checkpoint before it must stay whole.

The damage is written by tests/workers/data_fault_midrun_worker.py on rank 1 once its trainer is built."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ngpt_ds.data.loader import validation_batches
from ngpt_ds.data.shards import load_dataset_meta

from conftest import REPO, assert_complete, start_ranks, tiny_ngpt, tiny_train, write_ds_config, write_yaml

SEED = 1234
SEQ = 32  # tiny_ngpt's context
MICRO = 2
ACCUM = 2
STEP = 3  # the step whose second micro-batch on rank 1 holds the bad id
OFFSET = 5  # inside one window only (windows share just their first and last token)


def _position(data: Path, split: str, window: int) -> tuple[str, int]:
    """(the split's first shard, the position of token OFFSET of `window` in it)."""
    meta = load_dataset_meta(data)
    shard = meta.splits[split].shards[0]
    assert meta.dtype == "uint16" and window < (shard.tokens - 1) // SEQ  # the window lies in that shard
    return shard.file, window * SEQ + OFFSET


def _train_damaged_on_rank_1(data: Path, shard: str, position: int, value: int, *options) -> list:
    """Both ranks of launch/train.py, rank 1 writing `value` into the shard after startup; (rank, stdout,
    stderr) of each."""
    worker = REPO / "tests/workers/data_fault_midrun_worker.py"
    ranks = start_ranks([worker, 1, data / shard, position, value, "--", "--data", data, "--no-progress", *options])
    return [(rank, *rank.communicate(timeout=240)) for rank in ranks]


def _train_window_of_rank_1(data: Path) -> int:
    """The first window of rank 1's second micro-batch in step STEP (TokenWindowLoader's order: global
    micro-batch b is permutation slots [b*G, (b+1)*G), G = 2 ranks * MICRO, rank r taking the r-th MICRO)."""
    meta = load_dataset_meta(data)
    windows = sum((s.tokens - 1) // SEQ for s in meta.splits["train"].shards)
    batch = (STEP - 1) * ACCUM + 1
    return int(np.random.default_rng([SEED, 0]).permutation(windows)[batch * 2 * MICRO + MICRO])


def test_a_bad_token_id_that_only_rank_1_reads_mid_run_stops_both_ranks_with_its_message(tiny_dataset, tmp_path):
    """Fault: the loader named a token id >= vocab_size on the rank that read it, but when only rank 1's
    batch held it (step 3 of 4, second micro-batch of two), rank 1 raised alone: rank 0 died inside
    DeepSpeed's gradient all-reduce with gloo's 'Connection closed by peer' traceback and exit status 1 (on
    NCCL it would have waited out train.dist_timeout_s). Now the flag travels in the step's one all-reduce
    (the mean loss and stop flags): both ranks stop with exit status 2 and rank 1's message, no traceback,
    nothing saved after step 2, whose checkpoint stays whole."""
    data = Path(shutil.copytree(tiny_dataset, tmp_path / "data"))
    shard, position = _position(data, "train", _train_window_of_rank_1(data))
    yaml = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(4, seed=SEED, checkpoint_interval=2))
    ds = write_ds_config(tmp_path / "ds.json", stage=2, bf16=False, micro=MICRO, accum=ACCUM)
    out = tmp_path / "out"
    outputs = _train_damaged_on_rank_1(
        data, shard, position, 600, "--config", yaml, "--deepspeed_config", ds, "--out", out
    )
    expected = (
        f"error: rank 1: dataset {data}: shard {shard} holds token id 600 at token {position}, but the vocabulary "
        "has 512 ids (meta.json vocab_size)"
    )
    for rank, stdout, stderr in outputs:
        both = stdout + stderr
        assert rank.returncode == 2, both
        assert "Traceback" not in both and "Connection closed" not in both, both
        assert expected in stderr, both
        assert f"(read at step {STEP}; nothing was saved after step {STEP - 1}: the checkpoints in " in stderr, both
    assert "step      2/4" in outputs[0][1] and "step      3/4" not in outputs[0][1], outputs[0][1]
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert checkpoints == ["step_00000002"], checkpoints
    assert_complete(out / "checkpoints" / "step_00000002")


def test_a_bad_token_id_in_a_validation_window_of_rank_1_stops_both_ranks_with_its_message(tiny_dataset, tmp_path):
    """Fault: the same for the validation windows: rank 1 raised alone in its evaluation while rank 0 went
    on to the all-reduce of the validation loss (gloo: 'Connection closed by peer', exit status 1). Now both
    ranks stop with rank 1's message before the step's checkpoint is written."""
    data = Path(shutil.copytree(tiny_dataset, tmp_path / "data"))
    rank_1 = validation_batches(data, SEQ, MICRO, 1, 2, max_batches=2)
    shard, position = _position(data, "validation", int(rank_1._ids[1][0]))  # its second batch
    train = tiny_train(2, seed=SEED, eval_interval=2, checkpoint_interval=1)
    yaml = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), train)
    ds = write_ds_config(tmp_path / "ds.json", stage=2, bf16=False, micro=MICRO, accum=1)
    out = tmp_path / "out"
    outputs = _train_damaged_on_rank_1(
        data, shard, position, 700, "--config", yaml, "--deepspeed_config", ds, "--out", out
    )
    expected = f"error: rank 1: dataset {data}: shard {shard} holds token id 700 at token {position}, "
    for rank, stdout, stderr in outputs:
        both = stdout + stderr
        assert rank.returncode == 2, both
        assert "Traceback" not in both and "Connection closed" not in both, both
        assert expected in stderr, both
        assert "(read in the evaluation at step 2; nothing was saved after step 1: the checkpoints in " in stderr, both
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert checkpoints == ["step_00000001"], checkpoints
    assert_complete(out / "checkpoints" / "step_00000001")
