"""Worker for tests/test_nccl27_collective_trace.py: one rank of launch/train.py with its collectives traced.

usage: nccl27_trace.py TRACE_DIR SCRIPT [SCRIPT's arguments...]

Before ngpt_ds or DeepSpeed is imported, torch.distributed's collectives are wrapped (deepspeed.comm and
ngpt_ds both look them up on the module at each call), then SCRIPT runs as __main__. Each outermost call
(one that torch.distributed does not make from inside another: all_gather_object's own all_gathers are not
recorded) appends one JSON line to TRACE_DIR/rank<RANK>.jsonl: the operation, the group's size, each tensor
argument's shape, dtype and device, the innermost ngpt_ds frame outside train/collectives.py (the site that
asked), and the file that called torch.distributed.
NCCL pairs the ranks' collectives by their order alone: the test compares the ranks' sequences.
"""

import errno
import functools
import json
import os
import runpy
import sys
import threading
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
PROJECT = str(REPO / "ngpt_ds") + os.sep
TORCH_DIR = str(Path(torch.__file__).parent) + os.sep
WORKERS = Path(__file__).resolve().parent

OPERATIONS = (
    "all_reduce",
    "broadcast",
    "all_gather",
    "all_gather_into_tensor",
    "_all_gather_base",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "_reduce_scatter_base",
    "reduce",
    "gather",
    "scatter",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "send",
    "recv",
    "isend",
    "irecv",
    "all_gather_object",
    "broadcast_object_list",
    "gather_object",
    "scatter_object_list",
    "monitored_barrier",
)

_inside = threading.local()


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


@functools.cache
def _tracer_frame(filename: str) -> bool:
    """A frame of the tracers themselves (this file, tests/workers/gpu28_trace.py): never the call's site."""
    path = Path(filename).resolve()
    return path.parent == WORKERS and path.name.endswith("_trace.py")


def _where() -> tuple[str | None, str]:
    """(the innermost ngpt_ds frame outside train/collectives.py as 'path:function', the file that called
    torch.distributed)."""
    frames = [frame for frame in traceback.extract_stack() if not _tracer_frame(frame.filename)]
    caller = "?"
    for frame in reversed(frames):
        if not frame.filename.startswith(TORCH_DIR + "distributed"):
            caller = os.path.relpath(frame.filename, REPO) if frame.filename.startswith(str(REPO)) else frame.filename
            break
    for frame in reversed(frames):  # collectives.py is the way through, not the site that asks
        if frame.filename.startswith(PROJECT) and not frame.filename.endswith(f"train{os.sep}collectives.py"):
            return f"{os.path.relpath(frame.filename, REPO)}:{frame.name}", caller
    return None, caller


def _describe(name: str, original):
    """The record of one call of torch.distributed's `name`: (args, kwargs) -> its JSON line's fields."""

    def record(args, kwargs) -> dict:
        group = kwargs.get("group")
        tensors = [t for a in (*args, *kwargs.values()) for t in _tensors(a)]
        frame, caller = _where()
        return {
            "op": name,
            "group_size": dist.get_world_size(group) if dist.is_initialized() else None,
            "shapes": [list(t.shape) for t in tensors],
            "dtypes": [str(t.dtype) for t in tensors],
            "devices": [t.device.type for t in tensors],
            "sparse": [bool(t.is_sparse) for t in tensors],
            "frame": frame,
            "caller": caller,
        }

    return record


def traced_call(original, log, record):
    """`original` writing record(args, kwargs) to `log` as one JSON line before each outermost call: a call
    that torch.distributed makes from inside another traced one is not recorded."""

    def traced(*args, **kwargs):
        if getattr(_inside, "active", False):
            return original(*args, **kwargs)
        _inside.active = True
        try:
            log.write(json.dumps(record(args, kwargs)) + "\n")
            log.flush()
            return original(*args, **kwargs)
        finally:
            _inside.active = False

    traced.__wrapped__ = original
    return traced


def install(trace: Path, describe=_describe):
    """Wrap each of OPERATIONS that this torch has, recording describe(name, original)(args, kwargs) per
    call in `trace`; returns the open log."""
    log = open(trace, "a", buffering=1)  # noqa: SIM115 (open for the process's life; each line flushed)
    for name in OPERATIONS:
        original = getattr(dist, name, None)
        if original is not None:
            setattr(dist, name, traced_call(original, log, describe(name, original)))
    return log


RAISE_IN_PREPARE = "NGPT_DS_TEST_RAISE_IN_PREPARE"
"""Set on one rank: its startup's check_tensor_parallel raises ValueError(the value), an error no check of
ngpt_ds words (a bug), to test that it still reaches every rank (tests/test_nccl31_rank_divergent_inputs.py)."""


def _raise_in_prepare(message: str) -> None:
    from ngpt_ds.train import builder

    def fails(*args, **kwargs):
        raise ValueError(message)

    builder.check_tensor_parallel = fails


RAISE_IN_RESUME = "NGPT_DS_TEST_RAISE_IN_RESUME"
"""Set on one rank: after the ranks agreed on the checkpoint to resume, its own check of that checkpoint's seed
raises OSError(EIO, the value), as a read of one node's view of shared storage can
(tests/test_lead32_resume_error_on_one_rank.py)."""


def _raise_in_resume(message: str) -> None:
    from ngpt_ds.train import preflight

    def fails(checkpoint, seed):
        raise OSError(errno.EIO, message, str(checkpoint / "config.yaml"))

    preflight.check_resume_seed = fails


SAVE_PAUSE = "NGPT_DS_TEST_SAVE_PAUSE_S"
"""Set on every rank: each checkpoint save (loop.Trainer.save) ends that many seconds later, asleep, as
tests/test_loop26_max_time_eval.py's worker pads its saves. A run stopped by --max-time trains for the limit's
wall-clock time: a pause makes those seconds a few dozen steps, not hundreds, at almost no CPU. In the save, not
the step: --max-time's margin takes the save from the job's slowest rank (the same figure on every rank), so the
ranks still trip at the same step boundary, rank 0 first, as they do without the pause; a pause in the step would
widen each rank's own 'longest recent step' and let rank 1 trip alone ('--max-time on rank 1: ...')."""


def _pause_each_save(seconds: float) -> None:
    import time

    from ngpt_ds.train import loop

    save = loop.Trainer.save

    def paused(self):
        checkpoint = save(self)
        time.sleep(seconds)
        return checkpoint

    loop.Trainer.save = paused


def run_traced(install_tracer) -> None:
    """The tracers' command line, TRACE_DIR SCRIPT [ARGS...]: install_tracer(TRACE_DIR/rank<RANK>.jsonl),
    then SCRIPT as __main__ with ARGS."""
    install_tracer(Path(sys.argv[1]) / f"rank{os.environ['RANK']}.jsonl")
    if os.environ.get(RAISE_IN_PREPARE):
        _raise_in_prepare(os.environ[RAISE_IN_PREPARE])
    if os.environ.get(RAISE_IN_RESUME):
        _raise_in_resume(os.environ[RAISE_IN_RESUME])
    if os.environ.get(SAVE_PAUSE):
        _pause_each_save(float(os.environ[SAVE_PAUSE]))
    script = sys.argv[2]
    sys.argv = [script, *sys.argv[3:]]
    sys.path.insert(0, str(Path(script).resolve().parent))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    run_traced(install)
