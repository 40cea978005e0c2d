"""A read of DeepSpeed's checkpoint load that fails on one rank alone, while the checkpoint is whole (COMPLETE in
place, ngpt_ds's checks of its files passed): every rank stops with one line naming the rank and the file, exit 2,
after the same collectives.

Traced 2-rank runs on gloo (tests/workers/load38_read_fault.py): a ZeRO 3 run saves at step 2; each test resumes a
copy of it with rank 1's read of its optimizer shard failing (EIO, a PermissionError, the file cut short on disk, a
MemoryError). At ZeRO 3 DeepSpeed's load_checkpoint gathers the persistent parameters after its reads
(checkpoint_event_epilogue): a rank whose read raised must make those gathers too, or its agreement meets the other
rank's gathers. On gloo that ends in 'Connection reset by peer' or a rank killed by a mismatched size; under NCCL,
which pairs collectives by their order alone, the ranks would wait until train.dist_timeout_s or pair buffers of
other sizes (no NCCL here: the per-group trace checks the pairing NCCL would make).
"""

from __future__ import annotations

import shutil

import pytest
from same_collectives import same_calls

from conftest import REPO, run_launch, start_ranks, tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml
from workers.gpu28_trace_runs import read_traces, wait_ranks

WORKER = REPO / "tests/workers/load38_read_fault.py"
READ_FAULT = "NGPT_DS_TEST_LOAD38_READ_FAULT"  # the worker's (it imports its siblings: not importable here)
LISTING_FAULT = "NGPT_DS_TEST_LOAD38_LISTING_FAULT"  # the worker's
STEP2 = "step_00000002"
RANK1_SHARD = "zero_pp_rank_1_mp_rank_00_optim_states.pt"


def _traced(work, name: str, out, fault: str, *extra, ds: str = "z3.json", **env) -> dict:
    trace, logs = work / f"t_{name}", work / f"logs_{name}"
    trace.mkdir()
    logs.mkdir()
    flags = train_flags(work / "run.yaml", work / ds, work / "data", out, *extra)
    ranks = start_ranks([WORKER, trace, "launch/train.py", *flags], logs=logs, **{READ_FAULT: fault}, **env)
    codes = wait_ranks(ranks, name)  # a hang guard: a rank still running after it fails the test
    return {
        "codes": codes,
        "trace": read_traces(trace),
        "logs": [(logs / f"rank{r}.log").read_text() for r in range(2)],
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_dataset):
    """A 2-rank ZeRO 3 run of 2 steps, saved at step 2."""
    work = tmp_path_factory.mktemp("load38")
    (work / "data").symlink_to(tiny_dataset)
    write_yaml(work / "run.yaml", tiny_ngpt(), tiny_train(2, checkpoint_interval=2, dist_timeout_s=60))
    write_ds_config(work / "z3.json", stage=3, bf16=False, micro=4, accum=1)
    record = _traced(work, "save", work / "z3_run", "9:eio:none")  # no rank 9: no fault
    assert record["codes"] == [0, 0], record["logs"][0][-3000:]
    return work


def _errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("error:")]


WANT = {
    "eio": "{file} could not be read: Input/output error. The checkpoint passed its checks before the load",
    "eacces": "{file} could not be read: Permission denied. The checkpoint passed its checks before the load",
    "truncated": "{file} was refused: it holds a zip directory that cannot be read (",
    "memory": "{file}: this rank ran out of memory while it loaded the checkpoint {checkpoint} (MemoryError)",
}


@pytest.mark.parametrize("fault", list(WANT))
def test_a_read_failing_on_one_rank_stops_every_rank_after_the_same_collectives(saved, fault):
    """Fault: checkpoint_load._load_here made ZeRO 3's gathers after the reads (_after_the_read) for a checkpoint
    deleted during the load only; any other failed read on one rank (`fault`: EIO, a PermissionError, the file cut
    short on disk, a MemoryError) went straight to the ranks' agreement while the other rank gathered the persistent
    parameters. On the old code the ranks exited [1, -6]: rank 0 'Connection reset by peer' (then 'another rank of
    the job died during the startup'), rank 1 killed by gloo's 'Received data size doesn't match expected size'
    (under NCCL: a wait until train.dist_timeout_s, or buffers of other sizes paired). Now every rank exits 2 with
    one line naming rank 1 and its file, after the same collectives, and nothing is trained."""
    work = saved
    out = work / f"{fault}_run"
    shutil.copytree(work / "z3_run", out)
    record = _traced(work, fault, out, f"1:{fault}:{RANK1_SHARD}", "--max-steps", 3)
    assert record["codes"] == [2, 2], (record["logs"][0][-3000:], record["logs"][1][-3000:])
    checkpoint = out / "checkpoints" / STEP2
    want = "error: rank 1: " + WANT[fault].format(file=checkpoint / RANK1_SHARD, checkpoint=checkpoint)
    for log in record["logs"]:
        lines = _errors(log)
        assert len(lines) == 1 and lines[0].startswith(want), (want, log[-3000:])
    assert "Traceback" not in record["logs"][0]  # a known cause: one line, no traceback
    same_calls(record, fault)
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == [STEP2]


def test_a_read_failing_on_one_rank_in_a_universal_load_stops_every_rank_after_the_same_collectives(saved):
    """Fault: the same at ZeRO 2, in a universal load (a 1-rank checkpoint resumed on 2 ranks, converted first):
    DeepSpeed's load_checkpoint updates the low-precision weights after its reads (update_lp_params, an all-gather
    per group), which a rank whose read raised skipped. Here rank 1's read of the first fp32.pt of the universal
    folder fails with EIO. On the old code rank 1's answer in the agreement (an all_gather_object) met rank 0's
    all-gathers: both ranks waited until train.dist_timeout_s (60 s here), then exited [1, 1] on gloo's 'Timed out
    waiting 60000ms for send operation to complete' (NCCL: the same wait, or buffers of other sizes paired)."""
    work = saved
    write_ds_config(work / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    one = write_ds_config(work / "z2_dp1.json", stage=2, bf16=False, micro=4, accum=2)  # the 2-rank runs' batch
    out = work / "one_rank_run"
    run_launch("train.py", *train_flags(work / "run.yaml", one, work / "data", out))  # forked: imports done once
    record = _traced(work, "universal", out, "1:eio:fp32.pt", "--max-steps", 3, ds="z2.json")
    assert record["codes"] == [2, 2], (record["logs"][0][-3000:], record["logs"][1][-3000:])
    universal = out / "checkpoints" / f"{STEP2}-universal"
    want = f"error: rank 1: {universal}/zero/"
    for log in record["logs"]:
        lines = _errors(log)
        assert len(lines) == 1 and lines[0].startswith(want), (want, log[-3000:])
        assert "/fp32.pt could not be read: Input/output error. The checkpoint passed its checks" in lines[0]
    same_calls(record, "universal")
    assert "ngpt_ds/train/checkpoint_load.py:_after_the_read" in [c["frame"] for c in record["trace"][1]]


def test_an_unknown_error_of_one_ranks_read_is_one_line_and_its_traceback_once_on_that_rank(saved):
    """An error no check words in rank 1's read (a KeyError: a bug) stops every rank with one line naming rank 1, the
    file, type and message, after the same collectives; the traceback, its innermost frame included, is written once,
    on rank 1's stderr only (checkpoint_load logs it: the NgptConfigError its line becomes is not logged again)."""
    work = saved
    out = work / "bug_run"
    shutil.copytree(work / "z3_run", out)
    record = _traced(work, "bug", out, f"1:bug:{RANK1_SHARD}", "--max-steps", 3)
    assert record["codes"] == [2, 2], (record["logs"][0][-3000:], record["logs"][1][-3000:])
    file = out / "checkpoints" / STEP2 / RANK1_SHARD
    want = f"error: rank 1: {file}: loading it failed (KeyError: 'a bug in the read of rank 1'; the traceback is in "
    for log in record["logs"]:
        lines = _errors(log)
        assert len(lines) == 1 and lines[0].startswith(want), (want, log[-3000:])
    innermost = 'raise KeyError("a bug in the read of rank 1")  # the innermost frame of rank 1\'s traceback'
    assert record["logs"][1].count(innermost) == 1, record["logs"][1][-3000:]
    assert record["logs"][1].count("Traceback (most recent call last)") == 1, record["logs"][1][-3000:]
    assert "Traceback" not in record["logs"][0], record["logs"][0][-3000:]
    same_calls(record, "bug")


LISTED = {
    "eio": "error: rank 1: {checkpoint}: its files could not be listed: Input/output error",
    "deleted": "error: --resume {checkpoint}: it was deleted while this run loaded it",
}


@pytest.mark.parametrize("fault", list(LISTED))
def test_a_listing_of_the_checkpoint_failing_on_one_rank_stops_every_rank_after_the_same_collectives(saved, fault):
    """Fault (item 3 of session 38's reading of the resume's collectives): checkpoint_files.check_files_on_all_ranks,
    the check of every file before DeepSpeed's load, lists the folder's *.pt files on each rank, then agrees on the
    first refused file by an all-reduce of its index. A listing that raised on one rank (`eio`: an I/O error on one
    node's view of the storage) ended that rank before the all-reduce; a folder deleted between two ranks' listings
    (`deleted`: the retention of another run saving into that folder) gave rank 1 no files and rank 0 nine: the
    index agreed on named a file on rank 0 only, which stopped there while rank 1 went on into the shard check's
    gather. On the old code: `eio` exited [1, 1] (rank 1 an OSError traceback, rank 0 'another rank of the job died
    during the startup'), `deleted` [2, 1] (rank 0 '...model_states.pt could not be read (FileNotFoundError ...);
    the checkpoint is damaged', rank 1 'another rank of the job died'); under NCCL the rank left in its collective
    waits until train.dist_timeout_s. Now the all-reduce also carries each rank's count of files and the lowest
    rank whose listing failed, with its errno: every rank stops with the same line (a checkpoint found gone after
    the check: checkpoint_load's line for one deleted while loaded)."""
    work = saved
    out = work / f"listing_{fault}_run"
    shutil.copytree(work / "z3_run", out)
    env = {LISTING_FAULT: f"{fault}:{work / f'listed_{fault}'}"}
    record = _traced(work, f"listing_{fault}", out, "9:eio:none", "--max-steps", 3, **env)
    assert record["codes"] == [2, 2], (record["logs"][0][-3000:], record["logs"][1][-3000:])
    want = LISTED[fault].format(checkpoint=out / "checkpoints" / STEP2)
    for log in record["logs"]:
        lines = _errors(log)
        assert len(lines) == 1 and lines[0].startswith(want), (want, log[-3000:])
    same_calls(record, f"listing {fault}")
