"""Decisions taken from one rank's own inputs must reach every rank before they gate a collective or a raise.

NCCL pairs the ranks' collectives by order alone: a rank that raises between two collectives leaves the others
waiting in the next one until train.dist_timeout_s (gloo may notice the closed socket sooner). Each case here makes
an input differ between the 2 ranks of a real traced run of launch/train.py (tests/workers/nccl27_trace.py) and
checks that both ranks end the same way after the same collectives.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml as pyyaml

from conftest import REPO, cpu_env, free_port, tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml
from workers.gpu28_trace_runs import read_traces, signature, wait_ranks
from workers.nccl27_trace import RAISE_IN_PREPARE

WORKER = REPO / "tests/workers/nccl27_trace.py"


def _traced(work: Path, name: str, args: list, per_rank_env: list[dict], worker: Path = WORKER) -> dict:
    """A traced 2-rank run of launch/train.py with `per_rank_env[r]` added to rank r's environment (`worker`: the
    trace worker that runs it, one with its own injections)."""
    trace, logs = work / f"t_{name}", work / f"logs_{name}"
    trace.mkdir()
    logs.mkdir()
    port, ranks = free_port(), []
    for rank, extra in enumerate(per_rank_env):
        cmd = [sys.executable, *map(str, [worker, trace, "launch/train.py", *args])]
        with open(logs / f"rank{rank}.log", "w") as log:
            rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": 2}
            env = cpu_env(RANK=rank, LOCAL_RANK=rank, LOCAL_WORLD_SIZE=2, **rendezvous, **extra)
            ranks.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
    codes = wait_ranks(ranks, name)
    return {"codes": codes, "trace": read_traces(trace), "logs": [(logs / f"rank{r}.log").read_text() for r in (0, 1)]}


def _same_calls(run: dict) -> None:
    rank0, rank1 = run["trace"]
    for i, (a, b) in enumerate(zip(rank0, rank1, strict=False)):
        assert signature(a) == signature(b), f"call {i} differs: rank 0 {a} / rank 1 {b}"
    assert len(rank0) == len(rank1), f"rank 0 made {len(rank0)} collectives, rank 1 {len(rank1)}: {rank0[-1:]}"


@pytest.fixture()
def setup(tmp_path, tiny_dataset):
    yaml = write_yaml(tmp_path / "a.yaml", tiny_ngpt(), tiny_train(2, dist_timeout_s=30))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    return tmp_path, yaml, ds, tiny_dataset


def test_rank0_only_config_record_read_that_raises_does_not_leave_rank1_waiting(setup):
    """ngpt_ds/train/job.py: rank 0 alone reads --out's config.yaml for the "holds a run trained from" warning,
    between two startup agreements. A record it cannot compare (a config_source_absolute with a NUL byte:
    Path.resolve raises ValueError, which config_identity.same_config_file does not catch) raised on rank 0 alone: rank 0
    exited 1 with a ValueError traceback, and rank 1 was left in stop_all_if_any_failed's all_gather_object (under
    NCCL, until train.dist_timeout_s). A warning must neither stop the run nor split the ranks: it is skipped with
    a line saying why, and both ranks train."""
    work, yaml, ds, data = setup
    out = work / "run"
    first = _traced(work, "first", train_flags(yaml, ds, data, out), [{}, {}])
    assert first["codes"] == [0, 0], first["logs"]
    record = pyyaml.safe_load((out / "config.yaml").read_text())
    record["config_source_absolute"] = "/elsewhere/a\0.yaml"
    # Without the digest of the file's bytes (a record of an ngpt_ds before it): a recorded path that names nothing
    # here is then compared by path, not by those bytes (tests/test_lead32_config_on_another_mount.py).
    del record["config_source_sha256"]
    (out / "config.yaml").write_text(pyyaml.safe_dump(record))
    run = _traced(work, "nul", train_flags(yaml, ds, data, out, "--max-steps", "3"), [{}, {}])
    assert run["codes"] == [0, 0], run["logs"][0][-3000:]
    # Compared as written (same_config_file), so named as another file; a record that still cannot be compared
    # is skipped with "cannot compare ..." on rank 0 (job._warn_if_other_config).
    assert f"--out {out} holds a run trained from /elsewhere/a\x00.yaml" in run["logs"][0]
    _same_calls(run)


def test_node_memory_imposed_on_one_rank_refuses_on_every_rank(setup):
    """ngpt_ds/train/builder.py's startup memory check reads this node's memory (NGPT_DS_NODE_MEMORY_BYTES here,
    as on a node shared with other jobs): set on rank 1 alone, rank 1's check fails; both ranks must exit 2 with
    rank 1's message after the same collectives (agreement.stop_all_if_any_failed), none left waiting."""
    work, yaml, ds, data = setup
    run = _traced(work, "memory", train_flags(yaml, ds, data, work / "run"), [{}, {"NGPT_DS_NODE_MEMORY_BYTES": "1"}])
    assert run["codes"] == [2, 2], run["logs"]
    for log in run["logs"]:
        assert "rank 1: " in log, log[-2000:]
    _same_calls(run)
    assert [c["frame"] for c in run["trace"][0]] == ["ngpt_ds/train/agreement.py:stop_all_if_any_failed"]


def test_unexpected_startup_error_on_one_rank_reaches_every_rank(setup):
    """ngpt_ds/train/agreement.py's prepare_or_problem handed only NgptConfigError and OSError to the agreement: any
    other error in one rank's `prepare` (NGPT_DS_NODE_MEMORY_BYTES="²" on rank 1 alone passed builder's isdigit()
    check, and int() raised ValueError) ended that rank before the process group, and rank 0 waited in the
    rendezvous for train.dist_timeout_s, then failed with its own rendezvous error and not rank 1's. Now every rank
    stops with rank 1's error (exit 2, after one agreement), and rank 1 logs its traceback. The error is made by
    the trace worker (an error no check words, as a bug would raise); "²" itself is now refused in words."""
    work, yaml, ds, data = setup
    bug = {RAISE_IN_PREPARE: "a bug on this rank"}
    run = _traced(work, "odd", train_flags(yaml, ds, data, work / "run"), [{}, bug])
    assert run["codes"] == [2, 2], (run["codes"], run["logs"][0][-2000:])
    for log in run["logs"]:
        assert "rank 1: ValueError: a bug on this rank" in log, log[-2000:]
    assert "Traceback" in run["logs"][1]
    _same_calls(run)
    assert [c["frame"] for c in run["trace"][0]] == ["ngpt_ds/train/agreement.py:stop_all_if_any_failed"]

    run = _traced(work, "sup2", train_flags(yaml, ds, data, work / "run"), [{}, {"NGPT_DS_NODE_MEMORY_BYTES": "²"}])
    assert run["codes"] == [2, 2], (run["codes"], run["logs"][0][-2000:])
    for log in run["logs"]:
        assert "rank 1: NGPT_DS_NODE_MEMORY_BYTES='²' must be the node's memory as a whole number of bytes" in log
    _same_calls(run)
