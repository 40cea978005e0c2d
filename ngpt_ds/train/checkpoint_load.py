"""Load a checkpoint into a DeepSpeed engine (re-exported as ngpt_ds.train.checkpoint.load).

Reads through DeepSpeed's public `engine.load_checkpoint` only, after the files and the optimizer shards' groups are
checked (checkpoint_files, shard_groups_check), and turns what its load raises into one line naming the file and
the cause. A rank whose read failed (the checkpoint deleted, a file this rank alone could not read, cut short, or no
memory left) makes the collectives DeepSpeed's load makes after its reads (`_after_the_read`, as DeepSpeed 0.19.8's
load_checkpoint makes them), then every rank agrees.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from ngpt_ds import log, safe_load
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import collectives, shard_groups_check
from ngpt_ds.train.checkpoint_files import check_files_on_all_ranks
from ngpt_ds.train.checkpoint_layout import COMPLETE

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

_log = log.get(__name__)

STATE_DICT_MISMATCH = "Error(s) in loading state_dict"
"""How torch's Module.load_state_dict begins its error for missing, unexpected or mis-shaped weights."""


def load(engine: DeepSpeedEngine, path: Path) -> dict[str, Any]:
    """Collective: load engine, optimizer and scheduler state; returns the client state saved with it.
    Loading never runs code: every file is checked first (all ranks agree), and DeepSpeed's own
    reads go through the same restricted unpickler (ngpt_ds.safe_load).

    Every rank raises the same NgptConfigError when the load failed on any rank (lowest rank first), after one
    gather: a checkpoint deleted while the ranks read it (another run's retention) fails on the ranks that read
    after the deletion only, and a rank whose read had finished went on into its next collective (gloo:
    'Connection closed by peer'; NCCL: waiting until train.dist_timeout_s). A file one rank alone cannot read (EIO,
    permissions on one node, a copy cut short) fails there alone too."""
    try:
        check_files_on_all_ranks(path, engine.device)
    except NgptConfigError:  # raised on every rank together
        if not (path / COMPLETE).is_file():  # a file refused or the ranks' listings differing: it was being deleted
            raise NgptConfigError(_deleted_while_loaded(path)) from None
        raise
    shard_groups_check.check_on_all_ranks(engine, path)  # a NaN lr had blamed train.lr two steps later
    loaded: list[dict[str, Any]] = []

    def here() -> str | None:
        try:
            loaded.append(_load_here(engine, path))
        except NgptConfigError as err:
            return str(err)
        return None

    problems = collectives.all_answers(here, f"loading {path}")  # any other error: 'rank R: Type: message'
    failed = [(rank, problem) for rank, problem in enumerate(problems) if problem is not None]
    if failed:
        rank, problem = failed[0]
        raise NgptConfigError(problem if len(set(problems)) == 1 else f"rank {rank}: {problem}")
    return loaded[0]


def _load_here(engine: DeepSpeedEngine, path: Path) -> dict[str, Any]:
    """This rank's engine.load_checkpoint, any failure of its reads as NgptConfigError naming the file, raised after
    this rank made the collectives the load makes after its reads (`_after_the_read`), where the other ranks are."""
    read: list[str] = []
    with safe_load.deepspeed_loads_are_safe(), _noting_reads(read):
        try:
            load_path, client_state = engine.load_checkpoint(
                str(path.parent), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=True
            )
        except Exception as err:  # noqa: BLE001 (any error of a read: the other ranks go on to the collectives)
            if _raised_after_the_read(err):
                raise  # those collectives themselves failed (a rank gone): nothing left to pair with
            # A read that raised on this rank alone (an I/O error, a file cut short, memory) had skipped ZeRO 3's
            # gathers after the reads: its answer in `load` met the other ranks' gathers (gloo 'Connection reset
            # by peer' or an abort on a size mismatch; NCCL pairs calls of other sizes or waits).
            _after_the_read(engine)
            if isinstance(err, NgptConfigError):  # safe_load's refusal: it names the file
                raise
            raise _read_failed(path, read, err) from err
    if load_path is None:
        raise NgptConfigError(
            f"DeepSpeed could not load the checkpoint in {path}; it may be from another "
            "ZeRO stage or world size. Start a new run with --resume none and another --out"
        )
    return client_state


@contextlib.contextmanager
def _noting_reads(read: list[str]) -> Iterator[None]:
    """Within this block each file DeepSpeed's torch.load opens is appended to `read` (a MemoryError names none)."""
    guarded = torch.load

    def noted(f: Any, *args: Any, **kwargs: Any) -> Any:
        read.append(str(f))
        return guarded(f, *args, **kwargs)

    torch.load = noted
    try:
        yield
    finally:
        torch.load = guarded


AFTER_THE_READ = ("checkpoint_event_epilogue", "update_lp_params")
"""DeepSpeed's functions that make load_checkpoint's collectives after its reads (`_after_the_read`)."""


def _raised_after_the_read(err: BaseException) -> bool:
    return any(frame.f_code.co_name in AFTER_THE_READ for frame, _ in traceback.walk_tb(err.__traceback__))


def _read_failed(path: Path, read: list[str], err: Exception) -> NgptConfigError:
    """What a failed read on this rank says: the file (an OSError's own, else the last file DeepSpeed opened), the
    cause and the fix. A checkpoint deleted during the read, and torch's state-dict mismatch, have lines of
    their own. An error of no known cause (a bug, a damaged file torch's reader refuses) is logged with its traceback
    on this rank first: the line every rank prints holds its type and message only."""
    if isinstance(err, (AssertionError, OSError)) and not (path / COMPLETE).is_file():
        return NgptConfigError(_deleted_while_loaded(path))
    if isinstance(err, RuntimeError) and STATE_DICT_MISMATCH in str(err):
        # The weights are read from the model-states file every rank reads (ZeRO 0-2), before any
        # collective: every rank raises this together.
        detail = "; ".join(line.strip() for line in str(err).splitlines()[1:] if line.strip())
        return NgptConfigError(
            f"{path}: its weights do not fit the model its config.yaml describes ({detail}); the "
            "checkpoint was altered, or its config.yaml comes from another run. Resume from another "
            "checkpoint, or start a new run with --resume none and another --out"
        )
    file = read[-1] if read else str(path)
    if isinstance(err, OSError) and err.errno is not None:
        return NgptConfigError(
            f"{err.filename or file} could not be read: {os.strerror(err.errno)}. The checkpoint passed its "
            "checks before the load, so the file or its filesystem failed on this rank's node: check them "
            "(permissions, the disk, the network filesystem) and run the same command again, or resume from "
            "another checkpoint (--resume PATH)"
        )
    if isinstance(err, MemoryError):
        return NgptConfigError(
            f"{file}: this rank ran out of memory while it loaded the checkpoint {path} (MemoryError). Free host "
            "memory on its node (fewer ranks there, other jobs ended) and run the same command again"
        )
    _log.error(f"rank {dist.get_rank()}: loading {file} failed", exc_info=err)
    return NgptConfigError(
        f"{file}: loading it failed ({collectives.one_line(err)}; the traceback is in "
        "this rank's log). The checkpoint passed its checks before the load: the file changed since, or it "
        "reads differently on this node. Resume from another checkpoint (--resume PATH)"
    )


def _after_the_read(engine: DeepSpeedEngine) -> None:
    """The collectives engine.load_checkpoint makes after its reads, made by a rank whose read raised: ZeRO 3's
    checkpoint_event_epilogue gathers the persistent parameters, and a universal load at ZeRO 1/2 updates the
    low-precision weights (update_lp_params). Without them, at ZeRO 3 the failing rank's agreement (`load`) met
    the other ranks' parameter gathers: gloo 'Connection reset by peer'; NCCL pairs calls of other sizes."""
    optimizer = engine.optimizer
    if hasattr(optimizer, "checkpoint_event_epilogue"):
        optimizer.checkpoint_event_epilogue()
    if engine.load_universal_checkpoint() and not engine.zero_optimization_partition_weights():
        optimizer.update_lp_params()


def _deleted_while_loaded(path: Path) -> str:
    """The checkpoint was checked whole, then removed during DeepSpeed's read: a resume from another run's folder
    whose retention (train.keep_checkpoints) deleted it as that run saved a newer one. DeepSpeed had stopped on
    'assert len(self.ckpt_list) > 0' (a file list it found empty) in a 40-frame traceback."""
    from ngpt_ds.train.resume import newer_beside  # resume imports checkpoint, which re-exports this module

    return f"--resume {path}: it was deleted while this run loaded it{newer_beside(path)}"
