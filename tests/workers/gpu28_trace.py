"""Worker for tests/test_gpu28_*.py: one rank of a script with its collectives traced, per process group.

usage: gpu28_trace.py TRACE_DIR SCRIPT [SCRIPT's arguments...]

tests/workers/nccl27_trace.py's tracer (its operation list, tensor walk, call-site search, call wrapper and
command line), with what a model-parallel run needs on top: the process group each call ran on (its global
ranks), the reduce operation, a point-to-point call's peer, the chain of ngpt_ds frames (outermost first:
whether the call came from the training step), and each process group created (dist.new_group, itself a
collective every rank of the world makes in the same order). One JSON line per outermost call in
TRACE_DIR/rank<RANK>.jsonl.
"""

import inspect
import json
import os
import traceback
from pathlib import Path

import torch.distributed as dist
from nccl27_trace import PROJECT, REPO, _tensors, _where, run_traced
from nccl27_trace import install as install_operations

PEER_ARGUMENT = {"send": "dst", "isend": "dst", "recv": "src", "irecv": "src"}


def _chain() -> list[str]:
    """Every ngpt_ds frame on the stack as 'path:function', outermost first."""
    return [
        f"{os.path.relpath(f.filename, REPO)}:{f.name}"
        for f in traceback.extract_stack()[:-3]
        if f.filename.startswith(PROJECT)
    ]


def _group_ranks(group) -> list[int] | None:
    if not dist.is_initialized():
        return None
    if group is None or group is dist.GroupMember.WORLD:
        return list(range(dist.get_world_size()))
    return dist.get_process_group_ranks(group)


def _record(name: str, bound: dict) -> dict:
    tensors = [t for a in bound.values() for t in _tensors(a)]
    frame, caller = _where()
    op = bound.get("op")
    record = {
        "op": name,
        "group_ranks": _group_ranks(bound.get("group")),
        "shapes": [list(t.shape) for t in tensors],
        "dtypes": [str(t.dtype) for t in tensors],
        "devices": [t.device.type for t in tensors],
        "sparse": [bool(t.is_sparse) for t in tensors],
        "reduce_op": None if op is None else str(op).rsplit(".", 1)[-1],
        "peer": bound.get(PEER_ARGUMENT.get(name, ""), None),
        "frame": frame,
        "caller": caller,
        "chain": _chain(),
    }
    record["group_size"] = None if record["group_ranks"] is None else len(record["group_ranks"])
    return record


def _describe(name: str, original):
    """The record of one call of torch.distributed's `name`, its arguments bound by name (group, op, dst)."""
    signature = inspect.signature(original)

    def record(args, kwargs) -> dict:
        bound = signature.bind_partial(*args, **kwargs)
        bound.apply_defaults()
        return _record(name, dict(bound.arguments))

    return record


def _wrap_new_group(original, log):
    def traced(*args, **kwargs):
        group = original(*args, **kwargs)
        ranks = kwargs.get("ranks", args[0] if args else None)
        frame, caller = _where()
        record = {"op": "new_group", "group_ranks": None if ranks is None else sorted(ranks), "frame": frame}
        record.update(caller=caller, chain=_chain(), shapes=[], dtypes=[], devices=[], sparse=[], reduce_op=None)
        log.write(json.dumps({**record, "peer": None, "group_size": dist.get_world_size()}) + "\n")
        return group

    traced.__wrapped__ = original
    return traced


def install(trace: Path) -> None:
    log = install_operations(trace, _describe)
    dist.new_group = _wrap_new_group(dist.new_group, log)


if __name__ == "__main__":
    run_traced(install)
