"""The collective traces' shared test side: start traced ranks, wait for them, read their traces, and NCCL's rules.

Used by tests/test_nccl27_collective_trace.py (tests/workers/nccl27_trace.py's traces) and
tests/test_gpu28_collective_trace_modes.py (tests/workers/gpu28_trace.py's, per process group).

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
import subprocess
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
