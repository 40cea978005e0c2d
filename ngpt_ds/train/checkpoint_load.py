"""Load a checkpoint into a DeepSpeed engine (re-exported as ngpt_ds.train.checkpoint.load).

Reads through DeepSpeed's public `engine.load_checkpoint` only, after the files and the optimizer shards' groups are
checked (checkpoint_files, shard_groups_check), and turns what its load raises for a known cause into one line. A
rank whose read found the checkpoint deleted makes the collectives DeepSpeed's load makes after its reads
(`_after_the_read`, as DeepSpeed 0.19.8's load_checkpoint makes them), then every rank agrees.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ngpt_ds import safe_load
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import collectives, shard_groups_check
from ngpt_ds.train.checkpoint_files import check_files_on_all_ranks
from ngpt_ds.train.checkpoint_layout import COMPLETE

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

STATE_DICT_MISMATCH = "Error(s) in loading state_dict"
"""How torch's Module.load_state_dict begins its error for missing, unexpected or mis-shaped weights."""


def load(engine: DeepSpeedEngine, path: Path) -> dict[str, Any]:
    """Collective: load engine, optimizer and scheduler state; returns the client state saved with it.
    Loading never runs code: every file is checked first (all ranks agree), and DeepSpeed's own
    reads go through the same restricted unpickler (ngpt_ds.safe_load).

    Every rank raises the same NgptConfigError when the load failed on any rank (lowest rank first), after one
    gather: a checkpoint deleted while the ranks read it (another run's retention) fails on the ranks that read
    after the deletion only, and a rank whose read had finished went on into its next collective (gloo:
    'Connection closed by peer'; NCCL: waiting until train.dist_timeout_s)."""
    check_files_on_all_ranks(path, engine.device)
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
    """This rank's engine.load_checkpoint, its known failures as NgptConfigError."""
    with safe_load.deepspeed_loads_are_safe():
        try:
            load_path, client_state = engine.load_checkpoint(
                str(path.parent), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=True
            )
        except (AssertionError, OSError) as err:
            if (path / COMPLETE).is_file():
                raise
            _after_the_read(engine)  # raised by a read, before the collectives the other ranks' loads go on to
            raise NgptConfigError(_deleted_while_loaded(path)) from err
        except RuntimeError as err:
            if STATE_DICT_MISMATCH not in str(err):
                raise
            # The weights are read from the model-states file every rank reads (ZeRO 0-2), before any
            # collective: every rank raises this together.
            detail = "; ".join(line.strip() for line in str(err).splitlines()[1:] if line.strip())
            raise NgptConfigError(
                f"{path}: its weights do not fit the model its config.yaml describes ({detail}); the "
                "checkpoint was altered, or its config.yaml comes from another run. Resume from another "
                "checkpoint, or start a new run with --resume none and another --out"
            ) from None
    if load_path is None:
        raise NgptConfigError(
            f"DeepSpeed could not load the checkpoint in {path}; it may be from another "
            "ZeRO stage or world size. Start a new run with --resume none and another --out"
        )
    return client_state


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
