"""NCCL's rules on the resume's collectives added since the nccl27/gpu28/nccl31 traces, and on its error paths.

NCCL pairs the ranks' collectives by their order alone: a rank that skips one, raises between two, or sends another
shape or dtype leaves the others waiting until train.dist_timeout_s. Traced 2-rank runs of launch/train.py
(tests/workers/nccl37_trace.py, per process group, with the tensors inside each object collective's objects):
- ZeRO 2 and ZeRO 3: 2 steps with a save, then a resume to step 3: the checkpoint's file check
  (checkpoint_files.check_files_on_all_ranks), the optimizer shards' group check through a gather
  (shard_groups_check.check_on_all_ranks), DeepSpeed's load, the save's non-finite weights check;
- "refused": the ZeRO 2 checkpoint with rank 1's shard altered (another eps in the vectors' group, manifest
  rebuilt): rank 1's shard alone differs, and every rank must stop with the same line after the same collectives;
- "universal": a 1-rank ZeRO 2 checkpoint resumed on 2 ranks (the conversion and universal_check's gather, skipped
  for a conversion of this process), then the same checkpoint resumed again by --resume PATH: the conversion
  beside it is reused, and every rank checks its share of the files (universal_check.check_on_all_ranks);
- "diverged": a run whose update leaves NaN weights (divergence.nonfinite_weights: an all-reduce, then the names
  gathered) stops on every rank with the same line naming the checkpoints left;
- and a checkpoint deleted after rank 0's read and before rank 1's (ZeRO 2 and 3, a fault: see its test).
The device check (ngpt_ds/train/device_check.py) goes through the rendezvous's store, no collective: every trace's
first call is the startup agreement.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from crafted_checkpoints import alter, rewound
from same_collectives import same_calls

from conftest import (
    REPO,
    start_ranks,
    tiny_ngpt,
    tiny_train,
    train_flags,
    write_diverging_configs,
    write_ds_config,
    write_yaml,
)
from workers.gpu28_trace_runs import (
    NCCL_DTYPES,
    OBJECT_COLLECTIVES,
    nccl_rule_broken,
    read_traces,
    universal_run,
    wait_ranks,
)

WORKER = REPO / "tests/workers/nccl37_trace.py"
RAISE_IN_CONVERT = "NGPT_DS_TEST_RAISE_IN_CONVERT"  # the worker's
DELETE_DURING_LOAD = "NGPT_DS_TEST_DELETE_DURING_LOAD"  # the worker's (it imports its siblings: not importable here)
STEP2, STEP3 = "step_00000002", "step_00000003"
RANK1_SHARD = "zero_pp_rank_1_mp_rank_00_optim_states.pt"
SHARD_GROUPS = "optimizer_state_dict['base_optimizer_state']['param_groups']"


def _traced(work: Path, name: str, yaml: Path, ds: Path, data: Path, out: Path, *extra, **env) -> dict:
    trace, logs = work / f"t_{name}", work / f"logs_{name}"
    trace.mkdir()
    logs.mkdir()
    ranks = start_ranks([WORKER, trace, "launch/train.py", *train_flags(yaml, ds, data, out, *extra)], logs=logs, **env)
    codes = wait_ranks(ranks, name)
    return {
        "codes": codes,
        "trace": read_traces(trace),
        "logs": [(logs / f"rank{r}.log").read_text() for r in range(2)],
        "out": out,
        "summary": json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else None,
    }


def _errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_dataset) -> dict:
    """ZeRO 2 and 3: 2 steps with an evaluation and a save, then a resume to step 3 (saved too)."""
    work = tmp_path_factory.mktemp("nccl37")
    runs: dict = {"work": work}
    yaml = write_yaml(
        work / "run.yaml", tiny_ngpt(), tiny_train(2, eval_interval=2, checkpoint_interval=2, dist_timeout_s=60)
    )
    for stage in (2, 3):
        ds = write_ds_config(work / f"z{stage}.json", stage=stage, bf16=False, micro=4, accum=1)
        out = work / f"z{stage}_run"
        runs[f"zero{stage}"] = _traced(work, f"zero{stage}", yaml, ds, tiny_dataset, out)
        runs[f"zero{stage}_resume"] = _traced(
            work, f"zero{stage}_resume", yaml, ds, tiny_dataset, out, "--max-steps", 3
        )
    return runs


@pytest.fixture(scope="module")
def universal(tmp_path_factory, tiny_dataset) -> dict:
    """A 1-rank ZeRO 2 run of 2 steps (2 micro-batches a step: the 2-rank runs' batch), saved at step 2 and not resumed
    ("one_rank"), and a copy resumed on 2 ranks to step 3 through the universal conversion, traced: made once per
    pytest run with tests/test_gpu28_collective_trace_modes.py (tests/workers/gpu28_trace_runs.py universal_run).
    A later run in these folders takes their config files and dataset."""
    return universal_run(tmp_path_factory, tiny_dataset)


@pytest.fixture(scope="module")
def traces(saved, universal, tiny_dataset) -> dict:
    runs = dict(saved)
    work = runs["work"]
    yaml = work / "run.yaml"
    # Rank 1's shard of step 2 with the vectors' group's eps 1e-6 (rank 0's: 1e-8), the manifest rebuilt.
    source = rewound(work / "z2_run", work / "refused_run", STEP2, STEP3) / STEP2
    alter(
        source / RANK1_SHARD,
        lambda s: s["optimizer_state_dict"]["base_optimizer_state"]["param_groups"][1].update(eps=1e-6),
        source,
    )
    runs["refused_source"] = source
    z2 = work / "z2.json"
    runs["refused"] = _traced(work, "refused", yaml, z2, tiny_dataset, work / "refused_run", "--max-steps", 3)
    # A 1-rank ZeRO 2 checkpoint (2 micro-batches a step: the same batch) resumed on 2 ranks, then again by path.
    runs["universal"] = universal["record"]
    one_run, step2 = universal["one_run"], universal["one_run"] / "checkpoints" / STEP2
    again = (universal["yaml"], universal["ds"], universal["data"], one_run, "--resume", step2, "--max-steps", 3)
    runs["universal_again"] = _traced(work, "universal_again", *again)
    # The GPT baseline at lr 1e30 without clipping (ZeRO 0, fp32): NaN weights after step 2's update, before its save.
    nan_yaml, nan_ds = write_diverging_configs(work, checkpoint_interval=1)
    runs["diverged"] = _traced(work, "diverged", nan_yaml, nan_ds, tiny_dataset, work / "nan_run")
    return runs


RUNS = ["zero2", "zero2_resume", "zero3", "zero3_resume", "refused", "universal", "universal_again", "diverged"]
TRAINED_TO = {"zero2": 2, "zero2_resume": 3, "zero3": 2, "zero3_resume": 3, "universal": 3, "universal_again": 3}


def _frames(record: dict) -> list[list[str | None]]:
    return [[c["frame"] for c in calls] for calls in record["trace"]]


def test_the_runs_reached_what_they_cover(traces):
    for name, step in TRAINED_TO.items():
        assert traces[name]["codes"] == [0, 0], (name, traces[name]["logs"][0][-3000:])
        assert traces[name]["summary"]["step"] == step, name
    for name in ("zero2_resume", "zero3_resume", "refused", "universal", "universal_again"):
        frames = _frames(traces[name])[0]
        assert "ngpt_ds/train/checkpoint_files.py:check_files_on_all_ranks" in frames or name.startswith("universal")
        assert "ngpt_ds/train/shard_groups_check.py:check_on_all_ranks" in frames, name
    # The universal folder is checked by every rank where this process did not convert it (two gathers: the
    # lookup of the conversion, then each rank's share); after this process's own conversion the lookup only.
    universal_check = "ngpt_ds/train/universal_check.py:check_on_all_ranks"
    assert _frames(traces["universal"])[0].count(universal_check) == 1
    assert _frames(traces["universal_again"])[0].count(universal_check) == 2
    assert "ngpt_ds/train/reshape_convert.py:convert" in _frames(traces["universal"])[0]
    # The refused resume: every rank exits 2 with rank 1's shard named, before any step.
    refused, source = traces["refused"], traces["refused_source"]
    assert refused["codes"] == [2, 2], refused["logs"][0][-3000:]
    want = (
        f"error: {source / RANK1_SHARD}: {SHARD_GROUPS}[1]['eps'] is 1e-06, where zero_pp_rank_0_mp_rank_00_optim_states.pt "
        "records 1e-08 (DeepSpeed saves the same param groups into every rank's shard): the checkpoint "
        f"{source} was altered or damaged after it was saved. Resume from another checkpoint (--resume PATH), or start "
        "a new run with --resume none and another --out"
    )
    for log in refused["logs"]:
        assert _errors(log) == [want], log[-3000:]
    # The divergence: both ranks stop with the same line, after the collective check of the weights.
    diverged = traces["diverged"]
    assert diverged["codes"] == [2, 2], diverged["logs"][0][-3000:]
    lines = [_errors(log) for log in diverged["logs"]]
    assert lines[0] == lines[1] and len(lines[0]) == 1, lines
    assert "became NaN or inf in the update of step 2" in lines[0][0]
    assert lines[0][0].endswith("(--resume auto continues from the newest, step_00000001)")
    assert "ngpt_ds/train/divergence.py:nonfinite_weights" in _frames(diverged)[0]


@pytest.mark.parametrize("name", RUNS)
def test_every_rank_makes_the_same_collectives_in_the_same_order(traces, name):
    same_calls(traces[name], name)


@pytest.mark.parametrize("name", RUNS)
def test_no_call_nccl_refuses(traces, name):
    for rank, calls in enumerate(traces[name]["trace"]):
        made = [c for c in calls if c["op"] != "new_group"]
        assert made[0]["frame"] == "ngpt_ds/train/agreement.py:stop_all_if_any_failed", (name, rank)
        for call in calls:
            assert nccl_rule_broken(call) is None, (name, rank, nccl_rule_broken(call), call)
            assert set(call["dtypes"]) <= NCCL_DTYPES, (name, rank, call)
            assert set(call["devices"]) <= {"cpu"}, (name, rank, call)  # the engine's device here
            assert call["frame"] != "ngpt_ds/train/builder.py:init_process_group", (name, rank, call)


@pytest.mark.parametrize("name", RUNS)
def test_no_object_collective_sends_a_tensor(traces, name):
    """Under NCCL a tensor inside an object collective's objects is pickled with its device: a CUDA one is
    unpickled by every other rank onto the sender's device index. ngpt_ds's object collectives send strings,
    numbers and lists of them (the shard check: each group's hyperparameters as numbers, never the live tensors)."""
    for rank, calls in enumerate(traces[name]["trace"]):
        for call in calls:
            if call["op"] in OBJECT_COLLECTIVES and call["caller"].startswith("ngpt_ds/"):
                assert call["object_tensors"] == [], (name, rank, call)


@pytest.mark.parametrize("stage", [2, 3])
def test_a_checkpoint_deleted_while_one_rank_loads_it_stops_every_rank_after_the_same_collectives(
    saved, tiny_dataset, stage
):
    """Fault: checkpoint_load.load turned a checkpoint deleted during DeepSpeed's read (the retention of another run
    that saves into that folder) into one line, on the ranks that saw it deleted only: a rank whose read had
    finished went on into its next collective. Here rank 1 reads after rank 0's read finished and the folder is
    gone (tests/workers/nccl37_trace.py's DELETE_DURING_LOAD). On the old code rank 1 exited 2 and rank 0 was left
    in its next collective (gloo: 'another rank of the job died', exit 1; NCCL: waiting until train.dist_timeout_s).
    At ZeRO 3 DeepSpeed's load_checkpoint gathers the persistent parameters after its reads (its
    checkpoint_event_epilogue), which rank 1's raising read skipped: an agreement alone met rank 0's gathers
    (gloo 'Connection reset by peer'). Now the failing rank makes those gathers, and every rank stops with rank 1's
    line after the same collectives."""
    work = saved["work"]
    out = work / f"deleted_z{stage}_run"
    checkpoints = rewound(work / f"z{stage}_run", out, STEP2, STEP3)
    env = {DELETE_DURING_LOAD: work / f"rank0_read_z{stage}"}
    ds = work / f"z{stage}.json"
    record = _traced(work, f"deleted_z{stage}", work / "run.yaml", ds, tiny_dataset, out, "--max-steps", 3, **env)
    assert record["codes"] == [2, 2], record["logs"][0][-3000:]  # old code: [1, 2]
    want = f"error: rank 1: --resume {checkpoints / STEP2}: it was deleted while this run loaded it"
    for log in record["logs"]:
        lines = _errors(log)
        assert len(lines) == 1 and lines[0].startswith(want), log[-3000:]
    same_calls(record, f"deleted at ZeRO {stage}")


def test_an_error_on_rank_0_preparing_the_conversion_stops_every_rank_after_the_same_collectives(saved, universal):
    """Fault: reshape_convert.convert's preparation on rank 0 alone (the fragments of an earlier conversion, the
    leftover folder, the free space, starting the converter) turned an OSError into the answer every rank gets, but
    any other error (a bug; tests/workers/nccl37_trace.py's RAISE_IN_CONVERT) ended rank 0 alone while the others
    waited in the broadcast of its 'reused' flag (gloo: both ranks exited 1, rank 0 with the ValueError's traceback;
    NCCL: rank 1 waiting until train.dist_timeout_s). Now it is rank 0's answer as an OSError was: every rank
    exits 2 with its line, and rank 0 logs the traceback."""
    work = saved["work"]
    out = work / "convert_error_run"
    shutil.copytree(universal["one_rank"], out)
    env = {RAISE_IN_CONVERT: "a bug on rank 0"}
    record = _traced(
        work, "convert_error", universal["yaml"], universal["ds"], universal["data"], out, "--max-steps", 3, **env
    )
    assert record["codes"] == [2, 2], (record["codes"], record["logs"][0][-3000:])  # old code: [1, 1]
    for log in record["logs"]:
        assert _errors(log) == ["error: ValueError: a bug on rank 0"], log[-3000:]
    assert "Traceback" in record["logs"][0]
    same_calls(record, "an error preparing the conversion")
    assert not (out / "checkpoints" / f"{STEP2}-universal").exists()
