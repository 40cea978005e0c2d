"""The collective traces' shared test side: start traced ranks, wait for them, read their traces, and NCCL's rules.

Used by tests/test_nccl27_collective_trace.py (tests/workers/nccl27_trace.py's traces) and
tests/test_gpu28_collective_trace_modes.py (tests/workers/gpu28_trace.py's, per process group); `universal_run`, the
traced resume through the universal conversion, serves test_gpu28 and tests/test_nccl37_resume_collectives.py.

NCCL's rules, as torch's ProcessGroupNCCL applies them (torch/csrc/distributed/c10d/NCCLUtils.cpp and
ProcessGroupNCCL.cpp, torch 2.13):
- dtypes: getNcclDataType maps int8, uint8, int32, int64, float16, float32, float64, bfloat16 and the float8
  kinds, and bool (sent as uint8); any other (int16, uint16/32/64, complex outside all_reduce) raises
  "Input tensor data type is not supported for NCCL process group".
- reduce operations: getNcclReduceOp maps SUM, PRODUCT, MIN, MAX, AVG (and PREMUL_SUM); BAND, BOR and BXOR
  raise "Cannot use ReduceOp.BAND with NCCL"; AVG on a bool tensor raises "Cannot use ReduceOp.AVG with
  boolean inputs".
- operations: ProcessGroupNCCL implements broadcast, allreduce, reduce, allgather (and _allgather_base,
  into_tensor), reduce_scatter (and _base, tensor), alltoall(_base), barrier, send, recv, gather and scatter;
  it has no recvAnysource (a recv without src), and torch.distributed.monitored_barrier is gloo's only
  ("monitored_barrier is only implemented for GLOO backend").
Each refusal above was seen once on a GPU machine (torch 2.11, NCCL 2.28.9, one rank): uint32 and uint64 TypeError,
BAND ValueError, AVG on bool TypeError, monitored_barrier ValueError, a recv without src NotImplementedError, a CPU
tensor "No backend type associated with device type cpu"; int8, uint8, bool, int64, float64, gather, scatter and
all_gather_object ran. complex64 all_reduce ran too (as real pairs); the project sends no complex, so it is refused here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HANG_GUARD_S = 300  # a hang guard only
NCCL_DTYPES = {
    "torch.float16",
    "torch.bfloat16",
    "torch.float32",
    "torch.float64",
    "torch.int8",
    "torch.uint8",
    "torch.int32",
    "torch.int64",
    "torch.bool",  # sent as uint8
}
NCCL_REDUCE_OPS = {"SUM", "PRODUCT", "MIN", "MAX", "AVG", "PREMUL_SUM"}
NOT_ON_NCCL = {"monitored_barrier"}
OBJECT_COLLECTIVES = {"all_gather_object", "broadcast_object_list", "gather_object", "scatter_object_list"}
POINT_TO_POINT = {"send", "recv", "isend", "irecv"}


def wait_ranks(ranks: list[subprocess.Popen], what: str) -> list[int]:
    """Each rank's exit status; a rank still running after HANG_GUARD_S fails the test (all are killed)."""
    deadline = time.monotonic() + HANG_GUARD_S
    for rank in ranks:
        try:
            rank.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for r in ranks:
                r.kill()
            pytest.fail(f"{what}: a rank still runs after {HANG_GUARD_S} s (a hang: the ranks' collectives differ)")
    return [rank.returncode for rank in ranks]


def read_traces(trace_dir: Path, nproc: int = 2) -> list[list[dict]]:
    """Each rank's trace: one dict per collective, in call order."""
    return [
        [json.loads(line) for line in (trace_dir / f"rank{r}.jsonl").read_text().splitlines()] for r in range(nproc)
    ]


def signature(call: dict) -> tuple:
    """What NCCL pairs across the ranks of a group: the operation, the group, the tensors' shapes and dtypes
    (and, where the trace has it, the reduce operation)."""
    return (
        call["op"],
        call["group_size"],
        tuple(map(tuple, call["shapes"])),
        tuple(call["dtypes"]),
        call.get("reduce_op"),
    )


def nccl_rule_broken(call: dict) -> str | None:
    """The NCCL rule `call` breaks (torch's words where it has them), or None."""
    if call["op"] in NOT_ON_NCCL:
        return f"{call['op']} is only implemented for GLOO backend"
    bad = set(call["dtypes"]) - NCCL_DTYPES
    if bad:
        return f"Input tensor data type is not supported for NCCL process group: {sorted(bad)}"
    if any(call["sparse"]):
        return "a sparse tensor"
    op = call.get("reduce_op")
    if op is not None and op not in NCCL_REDUCE_OPS:
        return f"Cannot use ReduceOp.{op} with NCCL"
    if op == "AVG" and "torch.bool" in call["dtypes"]:
        return "Cannot use ReduceOp.AVG with boolean inputs"
    if call["op"] in ("recv", "irecv") and call.get("peer", 0) is None:
        return "ProcessGroupNCCL does not support recvAnysource"
    return None


UNIVERSAL_WORKER = "tests/workers/nccl37_trace.py"  # gpu28_trace.py's records, and the object collectives' tensors
UNIVERSAL_STEPS, UNIVERSAL_MORE = 2, 3


def universal_run(tmp_path_factory, data: Path) -> dict:
    """A 1-rank ZeRO 2 run of UNIVERSAL_STEPS steps (2 micro-batches a step: the 2-rank runs' batch; an evaluation and
    a save at step 2), "one_rank", never resumed; and a copy of it, "one_run", resumed on 2 ranks to step
    UNIVERSAL_MORE under UNIVERSAL_WORKER's tracer: the universal conversion, its check, an evaluation and a save.
    Made once per pytest run (conftest.shared_folder) for tests/test_gpu28_collective_trace_modes.py and
    tests/test_nccl37_resume_collectives.py, which each had run both. Returns the folders, the config files and the
    dataset they were made with (a later run in one_run, or in a copy of one_rank, takes the same ones), and the
    traced run's record: exit statuses, traces, logs, summary.json and the steps metrics.jsonl held after it."""
    from conftest import (
        REPO,
        read_metrics,
        run,
        shared_folder,
        start_ranks,
        tiny_ngpt,
        tiny_train,
        train_cmd,
        train_flags,
        write_ds_config,
        write_yaml,
    )

    model = tiny_ngpt()
    train = tiny_train(UNIVERSAL_STEPS, eval_interval=2, checkpoint_interval=2, dist_timeout_s=60)
    arguments = {"run": "universal", "worker": UNIVERSAL_WORKER, "model": model, "train": train, "to": UNIVERSAL_MORE}

    def make(folder: Path) -> None:
        yaml = write_yaml(folder / "run.yaml", model, train)
        one = write_ds_config(folder / "z2_dp1.json", stage=2, bf16=False, micro=4, accum=2)
        two = write_ds_config(folder / "z2.json", stage=2, bf16=False, micro=4, accum=1)
        run([sys.executable, *train_cmd(yaml, one, data, folder / "one_rank_run")])
        shutil.copytree(folder / "one_rank_run", folder / "one_run")
        trace, logs = folder / "t_universal", folder / "logs_universal"
        trace.mkdir()
        logs.mkdir()
        flags = train_flags(yaml, two, data, folder / "one_run", "--max-steps", UNIVERSAL_MORE)
        codes = wait_ranks(
            start_ranks([REPO / UNIVERSAL_WORKER, trace, "launch/train.py", *flags], logs=logs), "universal"
        )
        summary = folder / "one_run" / "summary.json"
        record = {
            "codes": codes,
            "data": str(data),
            "summary": json.loads(summary.read_text()) if summary.is_file() else None,
            "steps": [m["step"] for m in read_metrics(folder / "one_run")],
        }
        (folder / "record.json").write_text(json.dumps(record))

    folder = shared_folder(tmp_path_factory, arguments, make)
    record = json.loads((folder / "record.json").read_text())
    return {
        "one_rank": folder / "one_rank_run",
        "one_run": folder / "one_run",
        "yaml": folder / "run.yaml",
        "ds": folder / "z2.json",
        "data": Path(record["data"]),
        "record": {
            "codes": record["codes"],
            "trace": read_traces(folder / "t_universal"),
            "logs": [(folder / "logs_universal" / f"rank{r}.log").read_text() for r in range(2)],
            "out": folder / "one_run",
            "summary": record["summary"],
            "steps": record["steps"],
        },
    }
