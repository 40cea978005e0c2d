"""NCCL's rule on paths added since the nccl27 traces: activation checkpointing, the final evaluation, `--resume auto`
skipping a damaged checkpoint, the warning (rank 0's only) when --out holds another config file's run, train.compile.

NCCL pairs the ranks' collectives by their order alone: a rank that skips one, or passes another shape or dtype,
leaves the others waiting until train.dist_timeout_s. Two short traced 2-rank runs of launch/train.py
(tests/workers/nccl27_trace.py): run "first" trains 4 steps with activation checkpointing (saves at 2 and 4, an
evaluation at 2 and the final one at 4); then step_4 is damaged, and run "resume" starts from the same folder with
--resume auto and a copy of the config file under another name: rank 0 alone reads the folder's config.yaml for
the warning (between two startup agreements), and every rank verifies step_4, skips it and resumes from step_2.
Run "compiled" trains 2 steps with train.compile (an evaluation and a save at 2).
One trace per run serves every test.
"""

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO, read_metrics, start_ranks, tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml
from workers.gpu28_trace_runs import NCCL_DTYPES, nccl_rule_broken, read_traces, signature, wait_ranks

WORKER = REPO / "tests/workers/nccl27_trace.py"


def _traced(work: Path, name: str, yaml: Path, ds: Path, data: Path, out: Path, *extra) -> dict:
    trace, logs = work / f"t_{name}", work / f"logs_{name}"
    trace.mkdir()
    logs.mkdir()
    ranks = start_ranks([WORKER, trace, "launch/train.py", *train_flags(yaml, ds, data, out, *extra)], logs=logs)
    codes = wait_ranks(ranks, name)
    return {
        "codes": codes,
        "trace": read_traces(trace),
        "logs": [(logs / f"rank{r}.log").read_text() for r in range(2)],
        "summary": json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else None,
    }


def _damage(step_dir: Path) -> None:
    """Flip one byte in the middle of the checkpoint's largest file: its COMPLETE manifest's hash no longer matches."""
    biggest = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def traces(tmp_path_factory, tiny_dataset) -> dict:
    work = tmp_path_factory.mktemp("nccl31")
    train = tiny_train(4, eval_interval=2, checkpoint_interval=2, activation_checkpointing="blocks")
    yaml = write_yaml(work / "first.yaml", tiny_ngpt(), train)
    ds = write_ds_config(work / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    out = work / "run"
    runs = {"first": _traced(work, "first", yaml, ds, tiny_dataset, out)}
    runs["first"]["metrics"] = [m["step"] for m in read_metrics(out)]
    _damage(out / "checkpoints" / "step_00000004")
    other = work / "other.yaml"  # the same contents under another name: --out holds another config file's run
    shutil.copy(yaml, other)
    runs["resume"] = _traced(work, "resume", other, ds, tiny_dataset, out, "--resume", "auto", "--max-steps", "6")
    runs["resume"]["metrics"] = [m["step"] for m in read_metrics(out)]
    # train.compile (DeepSpeed's engine.compile): 2 steps, an evaluation and a save at 2.
    compiled = write_yaml(work / "compiled.yaml", tiny_ngpt(), {**train, "max_steps": 2, "compile": True})
    runs["compiled"] = _traced(work, "compiled", compiled, ds, tiny_dataset, work / "compiled_run")
    runs["work"] = work
    return runs


RUNS = ["first", "resume", "compiled"]


def test_the_runs_reached_what_they_cover(traces):
    first, resume = traces["first"], traces["resume"]
    assert first["codes"] == [0, 0], first["logs"]
    assert resume["codes"] == [0, 0], resume["logs"]
    assert first["summary"]["step"] == 4
    assert resume["summary"]["step"] == 6
    assert traces["compiled"]["codes"] == [0, 0], traces["compiled"]["logs"]
    assert traces["compiled"]["summary"]["step"] == 2
    # The resume took step_2 (step_4 damaged): steps 3 and 4 trained again, then 5 and 6.
    assert resume["metrics"][-4:] == [3, 4, 5, 6], resume["metrics"]
    assert "skipping checkpoint step_00000004" in resume["logs"][0]
    assert "holds a run trained from" in resume["logs"][0]  # rank 0's warning
    assert "holds a run trained from" not in resume["logs"][1]  # rank 0's alone: the others never read the file
    frames = {name: {c["frame"] for r in traces[name]["trace"] for c in r} for name in RUNS}
    for name in RUNS:
        assert any(f and f.startswith("ngpt_ds/train/metrics.py") for f in frames[name]), name  # an evaluation
        assert any(f and f.startswith("ngpt_ds/train/checkpoint") for f in frames[name]), name  # a save
    assert "ngpt_ds/train/resume.py:verify_on_all_ranks" in frames["resume"]  # step_4 verified by both ranks


@pytest.mark.parametrize("run", RUNS)
def test_every_rank_makes_the_same_collectives_in_the_same_order(traces, run):
    """A rank that takes a path the other does not (rank 0's config.yaml read for the warning, a damaged checkpoint
    seen by one rank) shows here as a call one rank makes and the other does not."""
    rank0, rank1 = traces[run]["trace"]
    assert len(rank0) > 20
    for i, (a, b) in enumerate(zip(rank0, rank1, strict=False)):
        assert signature(a) == signature(b), f"{run}: call {i} differs: rank 0 {a} / rank 1 {b}"
        assert a["frame"] == b["frame"], f"{run}: call {i} asked by {a['frame']} on rank 0, {b['frame']} on rank 1"
    assert len(rank0) == len(rank1), f"{run}: rank 0 made {len(rank0)} collectives, rank 1 {len(rank1)}"


@pytest.mark.parametrize("run", RUNS)
def test_no_call_nccl_refuses(traces, run):
    for rank, calls in enumerate(traces[run]["trace"]):
        for call in calls:
            assert nccl_rule_broken(call) is None, (run, rank, nccl_rule_broken(call), call)
            assert set(call["dtypes"]) <= NCCL_DTYPES, (run, rank, call)
            assert set(call["devices"]) <= {"cpu"}, (run, rank, call)  # the engine's device here
            assert call["frame"] != "ngpt_ds/train/builder.py:init_process_group", (run, rank, call)
        assert calls[0]["frame"] == "ngpt_ds/train/agreement.py:stop_all_if_any_failed", (run, rank)
