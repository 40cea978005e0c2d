"""Worker for tests/test_nccl37_*.py: one rank of launch/train.py with its collectives traced, per process group.

usage: nccl37_trace.py TRACE_DIR SCRIPT [SCRIPT's arguments...]

tests/workers/gpu28_trace.py's tracer, with two things on top:
- each object collective's record lists the tensors anywhere in the objects it sends (`object_tensors`: their
  dtypes), walking dicts, lists, tuples and sets: all_gather_object pickles a tensor with its device, and under NCCL
  a CUDA tensor is unpickled by every other rank onto the sender's device index (a context on a GPU that rank does
  not drive), which a CPU run cannot show;
- DELETE_DURING_LOAD, set on every rank: rank 0 reads the checkpoint in DeepSpeed's load, then writes the file the
  variable names; every other rank waits for that file, removes the checkpoint folder (as the retention of another
  run that saves a newer checkpoint into that folder would, between two ranks' reads), then reads;
- RAISE_IN_CONVERT: an error on rank 0 alone while it prepares the universal conversion.
"""

import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
from gpu28_trace import _describe as describe_per_group
from gpu28_trace import _wrap_new_group
from nccl27_trace import install as install_operations
from nccl27_trace import run_traced

OBJECT_ARGUMENTS = {  # the operation: the position and name of the argument it sends
    "all_gather_object": (1, "obj"),
    "broadcast_object_list": (0, "object_list"),
    "gather_object": (0, "obj"),
    "scatter_object_list": (1, "scatter_object_input_list"),
}
DELETE_DURING_LOAD = "NGPT_DS_TEST_DELETE_DURING_LOAD"
RAISE_IN_CONVERT = "NGPT_DS_TEST_RAISE_IN_CONVERT"
"""Set on every rank: rank 0's look for an earlier conversion's fragments (reshape_fragments.keep_for_rerun, the first
step of its preparation of the universal conversion) raises ValueError(the value), an error no check words."""
WAIT_S = 180  # a hang guard only


def _deep_tensors(value, seen: set[int] | None = None):
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in (*value.keys(), *value.values()):
            yield from _deep_tensors(item, seen)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _deep_tensors(item, seen)


def _describe(name: str, original):
    per_group = describe_per_group(name, original)

    def record(args, kwargs) -> dict:
        found = per_group(args, kwargs)
        if name in OBJECT_ARGUMENTS:
            index, keyword = OBJECT_ARGUMENTS[name]
            sent = args[index] if len(args) > index else kwargs.get(keyword)
            found["object_tensors"] = [str(t.dtype) for t in _deep_tensors(sent)]
        return found

    return record


def install(trace: Path) -> None:
    log = install_operations(trace, _describe)
    dist.new_group = _wrap_new_group(dist.new_group, log)


def _delete_during_load(signal: Path) -> None:
    """Rank 0 reads the checkpoint (DeepSpeed's _load_checkpoint, then _load_zero_checkpoint: the files, no
    collective) and writes `signal`; the other ranks wait for it, remove the folder, then read. At ZeRO 3 every rank
    then gathers the persistent parameters (load_checkpoint's checkpoint_event_epilogue), a rank whose read found
    no model-states file too: the wrap leaves load_checkpoint's collectives to every rank."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    read_model_states, read_zero_shards = DeepSpeedEngine._load_checkpoint, DeepSpeedEngine._load_zero_checkpoint
    rank = int(os.environ["RANK"])

    def zero_shards_then_signal(self, *args, **kwargs):
        result = read_zero_shards(self, *args, **kwargs)
        if rank == 0:
            signal.write_text("rank 0 read the checkpoint")
        return result

    def wait_then_delete(self, load_dir, tag, *args, **kwargs):
        if rank != 0:
            deadline = time.monotonic() + WAIT_S
            while not signal.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rank 0 did not read the checkpoint in {WAIT_S} s")
                time.sleep(0.1)
            shutil.rmtree(Path(load_dir) / tag)
        return read_model_states(self, load_dir, tag, *args, **kwargs)

    DeepSpeedEngine._load_checkpoint = wait_then_delete
    DeepSpeedEngine._load_zero_checkpoint = zero_shards_then_signal


def _raise_in_convert(message: str) -> None:
    from ngpt_ds.train import reshape_fragments

    def fails(*args, **kwargs):
        raise ValueError(message)

    if os.environ["RANK"] == "0":
        reshape_fragments.keep_for_rerun = fails


def _install(trace: Path) -> None:
    install(trace)
    if os.environ.get(DELETE_DURING_LOAD):
        _delete_during_load(Path(os.environ[DELETE_DURING_LOAD]))
    if os.environ.get(RAISE_IN_CONVERT):
        _raise_in_convert(os.environ[RAISE_IN_CONVERT])


if __name__ == "__main__":
    run_traced(_install)
