"""Every rank makes the same collectives, in the same order, with the same shapes and dtypes: NCCL's rule, on gloo.

NCCL pairs the ranks' collectives by their order alone: a rank that skips one, or sends another shape or dtype,
leaves the others waiting until train.dist_timeout_s (gloo may raise at once, or pair the wrong calls silently).
Real 2-rank runs of launch/train.py record each rank's calls into torch.distributed (tests/workers/nccl27_trace.py,
installed before ngpt_ds and DeepSpeed import it; deepspeed.comm calls torch.distributed underneath): training
steps, evaluations, periodic saves, a SIGTERM to ONE rank mid-run (the stop path and StopRequest.learn_who_asked),
a resume from its checkpoint, a --max-time stop, and ZeRO stages 0, 2 and 3. One trace per run serves every test.
"""

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (
    REPO,
    read_metrics,
    start_ranks,
    tiny_ngpt,
    tiny_train,
    train_flags,
    write_ds_config,
    write_yaml,
)
from workers.gpu28_trace_runs import HANG_GUARD_S, NCCL_DTYPES, read_traces, signature, wait_ranks

WORKER = REPO / "tests/workers/nccl27_trace.py"
SAVE_PAUSE = "NGPT_DS_TEST_SAVE_PAUSE_S"  # the worker's (it imports its siblings: not importable here)
SAVE_PAUSE_S = 3.0
# The project's only tensor collectives outside collectives.all_reduce_on: each passes a tensor it made on the
# device its caller was given (the engine's), checked by name here so that a new one is looked at.
DEVICE_PASSED = {"ngpt_ds/train/checkpoint_files.py:check_files_on_all_ranks"}


def _traced(
    trace_dir: Path, yaml: Path, ds: Path, data: Path, out: Path, *extra, logs: Path, **env
) -> list[subprocess.Popen]:
    trace_dir.mkdir(parents=True)
    logs.mkdir(parents=True)
    flags = train_flags(yaml, ds, data, out, *extra)
    return start_ranks([WORKER, trace_dir, "launch/train.py", *flags], logs=logs, **env)


@pytest.fixture(scope="module")
def traces(tmp_path_factory, tiny_dataset) -> dict:
    work = tmp_path_factory.mktemp("nccl27")
    model = tiny_ngpt()
    runs: dict = {}
    # ZeRO 2: steps, an evaluation every 2 steps, a save every 3; rank 1 alone gets a SIGTERM mid-run.
    yaml = write_yaml(
        work / "long.yaml",
        model,
        tiny_train(200, eval_interval=2, checkpoint_interval=3, stop_grace_s=20, dist_timeout_s=60),
    )
    ds2 = write_ds_config(work / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    out = work / "z2_run"
    started = time.monotonic()
    ranks = _traced(work / "t_sigterm", yaml, ds2, tiny_dataset, out, logs=work / "logs_sigterm")
    deadline, startup_s = started + HANG_GUARD_S, None
    while not (out / "metrics.jsonl").exists() or max((m["step"] for m in read_metrics(out)), default=0) < 7:
        if startup_s is None and (out / "metrics.jsonl").exists() and read_metrics(out):
            startup_s = time.monotonic() - started  # to its first step's record: how long this job starts up now
        if time.monotonic() > deadline or any(r.poll() is not None for r in ranks):
            for r in ranks:
                r.kill()
            pytest.fail(f"the run ended or hung before step 7: see {work / 'logs_sigterm'}")
        time.sleep(0.5)
    startup_s = startup_s or time.monotonic() - started  # steps 1 to 7 between two looks: up to now
    ranks[1].send_signal(signal.SIGTERM)
    runs["sigterm"] = {"codes": wait_ranks(ranks, "SIGTERM to rank 1"), "trace": read_traces(work / "t_sigterm")}
    runs["sigterm"]["summary"] = json.loads((out / "summary.json").read_text())
    # The same run folder again: a resume from the stop's checkpoint, stopped by --max-time. The limit counts from the
    # ranks' start, and one that leaves no time for a step and its save is refused before training (exit 2, nothing
    # saved): a fixed 60 s (a startup on a loaded machine took 41 s) spent 60 s of every run's wall time. It is now
    # twice this job's own startup above and 10 s, at most those 60 s, doubled and run again while refused. Each save
    # pauses SAVE_PAUSE_S (tests/workers/nccl27_trace.py): a few steps and saves, asleep most of the time.
    pause = {SAVE_PAUSE: SAVE_PAUSE_S}
    limit_s = min(2 * startup_s + 10, 60)
    for attempt in range(3):
        trace, logs = work / f"t_resume{attempt}", work / f"logs_resume{attempt}"
        limit = ("--max-time", f"{limit_s:.0f}", "--max-steps", "1000000")  # the limit, not the step count, ends it
        ranks = _traced(trace, yaml, ds2, tiny_dataset, out, *limit, logs=logs, **pause)
        codes = wait_ranks(ranks, f"resume, --max-time {limit_s:.0f}")
        if not any("leaves no time to train" in (logs / f"rank{r}.log").read_text() for r in range(2)):
            break  # trained (or failed otherwise: the tests below say how)
        limit_s *= 2
    runs["resume_max_time"] = {"codes": codes, "trace": read_traces(trace)}
    runs["resume_max_time"]["summary"] = json.loads((out / "summary.json").read_text())
    # ZeRO 0 and 3: 4 steps, evaluations and saves every 2.
    short = write_yaml(work / "short.yaml", model, tiny_train(4, eval_interval=2, checkpoint_interval=2))
    for stage in (0, 3):
        ds = write_ds_config(work / f"z{stage}.json", stage=stage, bf16=False, micro=4, accum=1)
        name = f"zero{stage}"
        ranks = _traced(work / f"t_{name}", short, ds, tiny_dataset, work / f"{name}_run", logs=work / f"logs_{name}")
        runs[name] = {"codes": wait_ranks(ranks, name), "trace": read_traces(work / f"t_{name}")}
    runs["logs"] = work
    return runs


RUNS = ["sigterm", "resume_max_time", "zero0", "zero3"]


@pytest.mark.parametrize("run", RUNS)
def test_every_rank_makes_the_same_collectives_in_the_same_order(traces, run):
    record = traces[run]
    rank0, rank1 = record["trace"]
    assert len(rank0) > 20
    for i, (a, b) in enumerate(zip(rank0, rank1, strict=False)):
        assert signature(a) == signature(b), f"{run}: call {i} differs: rank 0 {a} / rank 1 {b}"
    assert len(rank0) == len(rank1), f"{run}: rank 0 made {len(rank0)} collectives, rank 1 {len(rank1)}"
    assert record["codes"][0] == record["codes"][1], record["codes"]


def test_the_runs_reached_what_they_cover(traces):
    """The traces cover what they are meant to: an evaluation, saves, the stop path with learn_who_asked, a resume."""
    frames = {run: {c["frame"] for r in traces[run]["trace"] for c in r} for run in RUNS}
    assert traces["sigterm"]["codes"] == [0, 0]
    assert traces["resume_max_time"]["codes"] == [0, 0]
    assert traces["zero0"]["codes"] == traces["zero3"]["codes"] == [0, 0]
    assert traces["sigterm"]["summary"]["stopped_by"] == "rank 1: signal SIGTERM"  # rank 0 learned who asked
    # Each rank's limit counts from its own start, so either rank's margin may trip first: rank 0's own words, or
    # rank 1's as rank 0 learned them (stop_words.margin_reason / margin_reason_of); both mean the margin stopped it.
    stopped_by = traces["resume_max_time"]["summary"]["stopped_by"]
    assert re.match(r"--max-time( on rank 1)?: stopping \d+\.\d s early so that the last step and its save", stopped_by)
    assert traces["resume_max_time"]["summary"]["step"] > traces["sigterm"]["summary"]["step"] >= 7
    assert "ngpt_ds/train/stopping.py:learn_who_asked" in frames["sigterm"]
    assert "ngpt_ds/train/stopping.py:learn_who_asked" in frames["resume_max_time"]
    for run in RUNS:
        assert any(f and f.startswith("ngpt_ds/train/metrics.py") for f in frames[run]), run  # the evaluation
        assert any(f and f.startswith("ngpt_ds/train/checkpoint") for f in frames[run]), run  # a save
    assert any(f and f.startswith("ngpt_ds/train/resume.py") for f in frames["resume_max_time"])


@pytest.mark.parametrize("run", RUNS)
def test_every_project_tensor_collective_goes_through_the_communication_device(traces, run):
    """NCCL refuses a tensor off the rank's CUDA device: project code reduces through collectives.all_reduce_on
    (or passes the engine's device itself); here the engine's device is the CPU, so the tensors are all on it."""
    direct = set()
    for rank in traces[run]["trace"]:
        for call in rank:
            if call["shapes"]:  # a tensor collective (the object collectives carry no tensor argument)
                assert set(call["devices"]) == {"cpu"}, call
            if call["caller"].startswith("ngpt_ds/") and call["shapes"]:
                assert call["caller"] == "ngpt_ds/train/collectives.py" or call["frame"] in DEVICE_PASSED, call
                direct.add(call["frame"])
    assert "ngpt_ds/train/stopping.py:agreed" in direct or run != "sigterm"


@pytest.mark.parametrize("run", RUNS)
def test_no_collective_before_the_current_device_is_set(traces, run):
    """NCCL's object collectives and barrier run on the current CUDA device: init_process_group sets it
    (accelerator.set_device) after deepspeed.init_distributed and the store-only device check. No collective
    may come from inside it, nor from before it (the trace starts at the first, which is a startup agreement)."""
    for rank in traces[run]["trace"]:
        assert all(call["frame"] != "ngpt_ds/train/builder.py:init_process_group" for call in rank)
        assert all(call["frame"] is not None for call in rank)  # every collective is made for ngpt_ds code
        assert rank[0]["frame"] == "ngpt_ds/train/agreement.py:stop_all_if_any_failed"


@pytest.mark.parametrize("run", RUNS)
def test_no_dtype_nccl_lacks(traces, run):
    for rank in traces[run]["trace"]:
        for call in rank:
            assert set(call["dtypes"]) <= NCCL_DTYPES, call
            assert not any(call["sparse"]), call
