"""A shard readable at startup that becomes unreadable in the middle of a run, on one rank only (a disk
error, a network filesystem's stale handle once the file was deleted on another node, a permission taken away
on a server that checks it at each read): every rank stops with one message naming the shard, after the last
checkpoint, which stays whole.

The descriptor is broken by tests/workers/data27_unreadable_worker.py on rank 1 after a number of reads."""

from __future__ import annotations

import shutil
from pathlib import Path

from ngpt_ds.data.shards import load_dataset_meta

from conftest import REPO, assert_complete, start_ranks, tiny_ngpt, tiny_train, write_ds_config, write_yaml

MICRO, ACCUM = 2, 2


def _train_broken_on_rank_1(data: Path, split: str, reads: int, *options, mode="unreadable") -> tuple[str, list]:
    shard = load_dataset_meta(data).splits[split].shards[0].file
    worker = REPO / "tests/workers/data27_unreadable_worker.py"
    ranks = start_ranks([worker, 1, data / shard, reads, mode, "--", "--data", data, "--no-progress", *options])
    return shard, [(rank, *rank.communicate(timeout=240)) for rank in ranks]


def test_a_training_shard_unreadable_mid_run_on_rank_1_stops_both_ranks_naming_it(tiny_dataset, tmp_path):
    """Fault: the failed read raised a bare OSError on rank 1 (a traceback through the loader), and rank 0 died
    in the step's all-reduce with gloo's 'Connection closed by peer' (on NCCL: waited out train.dist_timeout_s)."""
    data = Path(shutil.copytree(tiny_dataset, tmp_path / "data"))
    yaml = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(4, checkpoint_interval=2))
    ds = write_ds_config(tmp_path / "ds.json", stage=2, bf16=False, micro=MICRO, accum=ACCUM)
    out = tmp_path / "out"
    shard, outputs = _train_broken_on_rank_1(
        data, "train", 2 * ACCUM, "--config", yaml, "--deepspeed_config", ds, "--out", out
    )
    expected = (
        f"error: rank 1: dataset {data}: reading shard {shard} failed (OSError: [Errno 9] Bad file descriptor) "
        "after the run opened it"
    )
    for rank, stdout, stderr in outputs:
        both = stdout + stderr
        assert rank.returncode == 2, both[-4000:]
        assert "Traceback" not in both and "Connection closed" not in both, both[-4000:]
        assert expected in stderr, both[-4000:]
        assert "(read at step 3; nothing was saved after step 2: the checkpoints in " in stderr, both[-4000:]
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert checkpoints == ["step_00000002"], checkpoints
    assert_complete(out / "checkpoints" / "step_00000002")


def test_a_validation_shard_unreadable_mid_run_on_rank_1_stops_both_ranks_naming_it(tiny_dataset, tmp_path):
    """Fault: the same in the evaluation: rank 1 raised alone while rank 0 went on to the all-reduce of the
    validation loss. Now both stop before the step's checkpoint is written."""
    data = Path(shutil.copytree(tiny_dataset, tmp_path / "data"))
    yaml = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(2, eval_interval=2, checkpoint_interval=1))
    ds = write_ds_config(tmp_path / "ds.json", stage=2, bf16=False, micro=MICRO, accum=1)
    out = tmp_path / "out"
    shard, outputs = _train_broken_on_rank_1(
        data, "validation", 0, "--config", yaml, "--deepspeed_config", ds, "--out", out
    )
    expected = f"error: rank 1: dataset {data}: reading shard {shard} failed (OSError: [Errno 9] Bad file descriptor)"
    for rank, stdout, stderr in outputs:
        both = stdout + stderr
        assert rank.returncode == 2, both[-4000:]
        assert "Traceback" not in both and "Connection closed" not in both, both[-4000:]
        assert expected in stderr, both[-4000:]
        assert "(read in the evaluation at step 2; nothing was saved after step 1: the checkpoints in " in stderr
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert checkpoints == ["step_00000001"], checkpoints
    assert_complete(out / "checkpoints" / "step_00000001")


def test_one_process_reading_a_shard_gone_unreadable_gets_the_one_line_error(tiny_dataset):
    """Without the trainer's DeferredFaults (launch/evaluate.py, one rank) the read raises the same message as
    an NgptConfigError (one line, exit status 2), not a bare OSError."""
    import os

    import numpy as np
    import pytest

    from ngpt_ds.data.windows import WindowIndex
    from ngpt_ds.errors import NgptConfigError

    meta = load_dataset_meta(tiny_dataset)
    index = WindowIndex(meta, "train", 32)
    first = index.read(np.array([0, 1]))
    shard = meta.splits["train"].shards[0]
    assert first.shape == (2, 33) and (first[0, :32] == np.fromfile(meta.shard_path(shard), "<u2", 32)).all()
    broken = os.open(meta.shard_path(shard), os.O_WRONLY)
    os.dup2(broken, index._fds[0])
    os.close(broken)
    with pytest.raises(NgptConfigError) as err:
        index.read(np.array([0, 1]))
    assert str(err.value).startswith(
        f"dataset {tiny_dataset}: reading shard {shard.file} failed (OSError: [Errno 9] Bad file descriptor) after "
        "the run opened it: the file became unreadable"
    )


def test_a_shard_deleted_mid_run_is_read_on_named_once_and_its_resume_refused_until_it_is_back(tiny_dataset, tmp_path):
    """Deleted (a person freeing disk space) while the run reads it, a shard is read on from the descriptor the
    run holds: the same tokens, the same losses as a run left alone. Fault: that was silent, and the week-long
    run learned at its resume, after the preemption, that it could not go on. Now a warning names the shard
    when the run first reads it deleted; the resume is refused with one line naming it, and once the shard is
    back it resumes."""
    from conftest import read_metrics, torchrun, train_cmd, train_flags

    data = Path(shutil.copytree(tiny_dataset, tmp_path / "data"))
    ds = write_ds_config(tmp_path / "ds.json", stage=2, bf16=False, micro=MICRO, accum=ACCUM)
    yaml = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(4, checkpoint_interval=2))
    left_alone = tmp_path / "left_alone"
    torchrun(*train_cmd(yaml, ds, data, left_alone))
    out = tmp_path / "out"
    shard, outputs = _train_broken_on_rank_1(
        data, "train", 2 * ACCUM, "--config", yaml, "--deepspeed_config", ds, "--out", out, mode="delete"
    )
    for rank, stdout, stderr in outputs:
        assert rank.returncode == 0, (stdout + stderr)[-4000:]
    said = outputs[0][1] + outputs[0][2]
    warning = (
        f"dataset {data}: shard {shard} was deleted or replaced since the run opened it; the run goes on reading "
        "the file it opened, but a resume reads the folder as it is then and refuses it unless the same dataset is "
        "back in place: put it back before this job ends"
    )
    assert said.count(warning) == 1, said[-4000:]
    assert not (data / shard).exists()
    losses = [(m["step"], m["train/loss"]) for m in read_metrics(out)]
    assert losses == [(m["step"], m["train/loss"]) for m in read_metrics(left_alone)] and len(losses) == 4

    six = write_yaml(tmp_path / "six.yaml", tiny_ngpt(), tiny_train(6, checkpoint_interval=2))
    missing = (
        f"error: dataset {data}: 1 problem\n  - shard {shard} = 'missing': the file listed in meta.json is not in "
        f"{data}; copy it back from a good copy of the dataset (a run resumes only on the data it trained on), or "
        f"delete {data} and prepare it again"
    )
    for rank in start_ranks([REPO / "launch/train.py", *train_flags(six, ds, data, out)]):
        stdout, stderr = rank.communicate(timeout=240)
        assert rank.returncode == 2 and "Traceback" not in stdout + stderr, (stdout + stderr)[-4000:]
        assert missing in stderr, stderr[-4000:]
    shutil.copy(tiny_dataset / shard, data / shard)  # the same dataset back in place
    torchrun(*train_cmd(six, ds, data, out))
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4, 5, 6]
