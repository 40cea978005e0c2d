"""NCCL's rules, per process group, for tensor, sequence (Ulysses) and pipeline parallelism and the universal conversion.

tests/test_nccl27_collective_trace.py traces data-parallel runs, where every collective runs over the world. The
model-parallel modes add process groups (tensor-, sequence-, data-parallel groups, a pipeline's stage pairs), and
NCCL pairs the calls of each communicator by order alone: the ranks of each group must make the same calls on it,
in the same order, with the same shapes, dtypes and reduce operation; a send must meet a recv of its shape; and
every rank must create the same groups in the same order (dist.new_group is itself collective). Real 2-rank runs
of launch/train.py, traced by tests/workers/gpu28_trace.py: per mode a few steps with an evaluation and saves, then
a resume from its checkpoint; and a ZeRO-2 checkpoint saved on 1 rank, resumed on 2 through the universal
conversion (ngpt_ds/train/reshape_convert.py: tests/workers/gpu28_trace_runs.py universal_run, shared with
tests/test_nccl37_resume_collectives.py). The rules on operations, dtypes and reduce operations are torch's
ProcessGroupNCCL's (tests/workers/gpu28_trace_runs.py names where); object collectives (a pickle, a device copy
and a host sync each under NCCL) stay off the training step and its log lines.
"""

from collections import defaultdict
from pathlib import Path

import pytest

from conftest import REPO, read_metrics, start_ranks, tiny_ngpt, tiny_train, write_ds_config, write_yaml
from workers.gpu28_trace_runs import (
    OBJECT_COLLECTIVES,
    POINT_TO_POINT,
    UNIVERSAL_MORE,
    nccl_rule_broken,
    read_traces,
    signature,
    universal_run,
    wait_ranks,
)

WORKER = REPO / "tests/workers/gpu28_trace.py"
STEPS, MORE = 4, 6
MODES = {
    # name: train fields, (ZeRO stage, micro-batch, accumulation)
    "tensor": ({"tensor_parallel_size": 2}, (1, 4, 1)),
    "sequence": ({"sequence_parallel_size": 2}, (2, 4, 1)),
    "pipeline": ({"pipeline_parallel_size": 2}, (1, 2, 2)),
}


def _train(work: Path, name: str, yaml: Path, ds: Path, data: Path, out: Path, *extra) -> dict:
    trace, logs = work / f"t_{name}", work / f"logs_{name}"
    trace.mkdir()
    logs.mkdir()
    args = ["--config", yaml, "--deepspeed_config", ds, "--data", data, "--out", out, "--no-progress", *extra]
    ranks = start_ranks([WORKER, trace, "launch/train.py", *args], logs=logs)
    return {"codes": wait_ranks(ranks, name), "trace": read_traces(trace), "out": out, "logs": logs}


@pytest.fixture(scope="module")
def traces(tmp_path_factory, tiny_dataset) -> dict:
    work = tmp_path_factory.mktemp("gpu28")
    runs: dict = {}
    for mode, (fields, (stage, micro, accum)) in MODES.items():
        train = tiny_train(STEPS, eval_interval=2, checkpoint_interval=2, **fields)
        yaml = write_yaml(work / f"{mode}.yaml", tiny_ngpt(), train)
        ds = write_ds_config(work / f"{mode}.json", stage=stage, bf16=False, micro=micro, accum=accum)
        out = work / f"{mode}_run"
        runs[mode] = _train(work, mode, yaml, ds, tiny_dataset, out)
        runs[f"{mode}_resume"] = _train(work, f"{mode}_resume", yaml, ds, tiny_dataset, out, "--max-steps", MORE)
    # ZeRO 2 saved on 1 rank (2 micro-batches a step), resumed on 2 (1 each): the universal conversion. The same
    # traced run as tests/test_nccl37_resume_collectives.py's, made once per pytest run (tests/workers/nccl37_trace.py's
    # records: these, and the tensors inside object collectives).
    runs["universal"] = universal_run(tmp_path_factory, tiny_dataset)["record"]
    return runs


RUNS = [*MODES, *(f"{mode}_resume" for mode in MODES), "universal"]


def _on_groups(calls: list[dict]) -> dict[tuple, list[dict]]:
    """A rank's collective calls (not point-to-point, not group creation) by the process group they ran on."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for call in calls:
        if call["op"] not in POINT_TO_POINT and call["op"] != "new_group":
            groups[tuple(call["group_ranks"])].append(call)
    return groups


def test_the_runs_reached_what_they_cover(traces):
    for name in RUNS:
        assert traces[name]["codes"] == [0, 0], f"{name}: see {traces[name]['logs']}"
    for mode in MODES:
        steps = [m["step"] for m in read_metrics(traces[mode]["out"])]
        assert steps == [1, 2, 3, 4, 5, 6], (mode, steps)  # the first run's 4, then the resume's 2
    # the 1-rank run's 2 steps, then the 2-rank resume's (metrics.jsonl as the resume left it: test_nccl37 resumes
    # that folder again)
    assert traces["universal"]["steps"] == list(range(1, UNIVERSAL_MORE + 1))
    frames = {name: {c["frame"] for r in traces[name]["trace"] for c in r} for name in RUNS}
    for name in RUNS:
        assert any(f and f.startswith("ngpt_ds/train/metrics.py") for f in frames[name]), name  # an evaluation
        assert any(f and f.startswith("ngpt_ds/train/checkpoint") for f in frames[name]), name  # a save
    for name in (*(f"{mode}_resume" for mode in MODES), "universal"):
        assert any(f and f.startswith("ngpt_ds/train/resume.py") for f in frames[name]), name
    assert any(f and f.startswith("ngpt_ds/train/reshape") for f in frames["universal"])  # the conversion's own
    # Each mode's own groups and traffic are in its trace.
    tensor = traces["tensor"]["trace"][0]
    assert any(c["frame"] == "ngpt_ds/parallel/layers.py:forward" for c in tensor)
    sequence = traces["sequence"]["trace"][0]
    assert any(c["op"].startswith("all_to_all") for c in sequence)
    pipeline = traces["pipeline"]["trace"]
    assert any(c["op"] in POINT_TO_POINT or c["op"] == "broadcast" for c in pipeline[0])


@pytest.mark.parametrize("run_name", RUNS)
def test_the_ranks_of_each_group_make_the_same_calls_in_the_same_order(traces, run_name):
    per_rank = [_on_groups(calls) for calls in traces[run_name]["trace"]]
    groups = set(per_rank[0]) | set(per_rank[1])
    assert groups, run_name
    for group in groups:
        sequences = {rank: per_rank[rank].get(group, []) for rank in group}
        for rank in range(2):
            if rank not in group:
                assert group not in per_rank[rank], f"{run_name}: rank {rank} called on group {group}, not its own"
        first, *others = sorted(sequences)
        for other in others:
            a, b = sequences[first], sequences[other]
            for i, (x, y) in enumerate(zip(a, b, strict=False)):
                assert signature(x) == signature(y), f"{run_name}, group {group}, call {i}: {x} / {y}"
            assert len(a) == len(b), f"{run_name}, group {group}: rank {first} made {len(a)} calls, {other} {len(b)}"


@pytest.mark.parametrize("run_name", RUNS)
def test_every_rank_creates_the_same_groups_in_the_same_order(traces, run_name):
    created = [[c["group_ranks"] for c in calls if c["op"] == "new_group"] for calls in traces[run_name]["trace"]]
    assert created[0] == created[1], run_name


@pytest.mark.parametrize("run_name", RUNS)
def test_each_send_meets_a_recv_of_its_shape(traces, run_name):
    sent: dict[tuple, list] = defaultdict(list)
    received: dict[tuple, list] = defaultdict(list)
    for rank, calls in enumerate(traces[run_name]["trace"]):
        for call in calls:
            if call["op"] in ("send", "isend"):
                sent[(rank, call["peer"])].append((call["shapes"], call["dtypes"]))
            elif call["op"] in ("recv", "irecv"):
                received[(call["peer"], rank)].append((call["shapes"], call["dtypes"]))
    assert sent.keys() == received.keys(), run_name
    for pair in sent:
        assert sent[pair] == received[pair], f"{run_name}: {pair}"


@pytest.mark.parametrize("run_name", RUNS)
def test_no_call_nccl_refuses(traces, run_name):
    for calls in traces[run_name]["trace"]:
        for call in calls:
            assert nccl_rule_broken(call) is None, (nccl_rule_broken(call), call)
            assert set(call["devices"]) <= {"cpu"}, call  # the engine's device here


@pytest.mark.parametrize("run_name", RUNS)
def test_no_object_collective_on_the_training_step(traces, run_name):
    for calls in traces[run_name]["trace"]:
        for call in calls:
            if call["op"] in OBJECT_COLLECTIVES:
                assert "ngpt_ds/train/loop.py:train_step" not in call["chain"], call


@pytest.mark.parametrize("run_name", RUNS)
def test_no_object_collective_at_a_log_line(traces, run_name):
    """A log line runs every log_interval steps: under pipeline parallelism ngpt_health gathered every stage's health
    values with an all_gather_object there; one float64 all-reduce over the pipe-parallel group replaced it."""
    for calls in traces[run_name]["trace"]:
        for call in calls:
            if call["op"] in OBJECT_COLLECTIVES:
                assert "ngpt_ds/train/loop.py:_log" not in call["chain"], call


@pytest.mark.parametrize("run_name", RUNS)
def test_no_collective_before_the_current_device_is_set(traces, run_name):
    for calls in traces[run_name]["trace"]:
        made = [c for c in calls if c["op"] != "new_group"]
        assert all(c["frame"] != "ngpt_ds/train/builder.py:init_process_group" for c in calls)
        assert all(c["frame"] is not None for c in made)
        assert made[0]["frame"] == "ngpt_ds/train/agreement.py:stop_all_if_any_failed"
