"""One rank's part of a training job: validate, start the process group, agree with the other ranks on the
data, the config and the checkpoint to resume, take --out's lock, train (ngpt_ds.train.loop), tear down."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import torch.distributed as dist

from ngpt_ds import log
from ngpt_ds.data.loader import same_dataset_on_every_rank
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import (
    agreement,
    checkpoint,
    checkpoint_delete,
    checkpoint_space,
    lineage,
    out_moved,
    run_identity,
)
from ngpt_ds.train.builder import TrainOptions, choose_resume, init_process_group
from ngpt_ds.train.config_identity import other_config_warning
from ngpt_ds.train.loop import Trainer
from ngpt_ds.train.memory_plan import parameters_at_least
from ngpt_ds.train.run_lock import lock_run
from ngpt_ds.train.startup_peers import lost_peer, peers_watched
from ngpt_ds.train.summary import Summary, mend_finished_summary, replace_file

_log = log.get(__name__)


def train(options: TrainOptions) -> Summary:
    """Validate everything, start the process group, train, and tear down."""
    prepared_here, problem, dist_env, timeout_s = agreement.prepare_or_problem(options)
    init_process_group(dist_env, timeout_s)
    lock = None
    try:
        # A peer lost (killed, out of memory) in the agreements before the trainer: one line, not gloo's traceback
        with peers_watched(dist.get_rank(), timeout_s):
            agreement.stop_all_if_any_failed(problem)
            assert prepared_here is not None  # this rank's prepare failed: stop_all_if_any_failed raised
            prepared = prepared_here
            # Before the engine: ranks whose --data differ (node-local copies) would build models of different
            # vocabularies (DeepSpeed's first broadcast aborted in gloo) or number the windows differently.
            same_dataset_on_every_rank(Path(prepared.run.data_dir))  # first: its vocabulary is also in the config
            agreement.same_config_on_every_rank(prepared.run)
            # Verified by all ranks together: each checkpoint file is read once in all. The checks after that
            # read each rank's own files (node-local data may record block hashes on one node only), so one
            # rank's refusal reaches all, none left waiting in the engine's first collective.
            try:
                prepared, problem = choose_resume(prepared, options.resume, collective=True), None
            except NgptConfigError as err:
                problem = str(err)
            except Exception as err:  # noqa: BLE001 (any error: the others must hear of it, not wait for this rank)
                if lost_peer(err, dist.get_rank(), timeout_s) is not None:
                    raise  # a peer lost in the resume choice's own collectives: peers_watched's one line, no traceback
                # After its collective verification, each rank reads the chosen checkpoint's files on its own (its
                # config.yaml, DeepSpeed's layout): an I/O error on one node's view of shared storage raised there
                # alone, and the others waited in the agreement below until train.dist_timeout_s.
                _log.exception(f"rank {dist.get_rank()}: choosing the checkpoint to resume failed")
                problem = f"{type(err).__name__}: {err}"
            agreement.stop_all_if_any_failed(problem)
            resumed_step = checkpoint.step_of(prepared.resume_from.name) if prepared.resume_from is not None else -1
            if resumed_step >= prepared.run.train.max_steps:
                assert prepared.resume_from is not None  # resumed_step is -1 without one
                own = checkpoint.complete_checkpoints(Path(prepared.run.out_dir) / checkpoint.CHECKPOINTS)
                if dist.get_rank() == 0 and own and own[-1].resolve() == prepared.resume_from.resolve():
                    _log.info(
                        f"{prepared.run.out_dir} is already trained to step {resumed_step}/{prepared.run.train.max_steps}"
                        ": nothing to do. Pass --max-steps N to train further, or --out DIR for a new run."
                    )
                    mend_finished_summary(Path(prepared.run.out_dir), resumed_step, prepared.run.train.max_steps)
                elif dist.get_rank() == 0:  # an older step, or another run's: --out's own summary is not this one's
                    _log.info(
                        f"--resume names {prepared.resume_from} (step {resumed_step}) and --max-steps is "
                        f"{prepared.run.train.max_steps}: nothing to train. Pass --max-steps N above {resumed_step} to "
                        "train on from it"
                    )
                return Summary(
                    "already-finished",
                    resumed_step,
                    prepared.run.train.max_steps,
                    0,
                    float("nan"),
                    float("nan"),
                    0.0,
                    str(prepared.resume_from),
                    prepared.run.out_dir,
                )
            out_dir = Path(prepared.run.out_dir)
            lock = lock_run(out_dir)  # one writer per --out; every rank stops here if another trainer has it
            problem = None
            if dist.get_rank() == 0:
                assert lock is not None  # rank 0 holds it: lock_run raised otherwise
                if lock.note:
                    _log.info(lock.note)
                if options.out is not None:  # with --out left out, builder refuses another config's folder
                    _warn_if_other_config(out_dir, Path(prepared.run.config_source), prepared.run.config_source_sha256)
                try:
                    moved = lineage.start_lineage(
                        out_dir, prepared.resume_from, named=options.resume not in ("auto", "none")
                    )
                    if moved:
                        _log.info(moved)
                    if run_identity.ensure(out_dir) is None:  # recorded in each checkpoint saved (resume tells copies)
                        _log.warning(run_identity.not_an_id_warning(out_dir))
                    checkpoint_delete.mark_config_source(
                        out_dir / checkpoint.CHECKPOINTS, prepared.run.config_source, prepared.run.config_source_sha256
                    )
                    replace_file(out_dir / "config.yaml", prepared.run.to_yaml())
                except OSError as err:  # an answer for every rank: the others would wait for rank 0 in the engine
                    problem = _setup_failed(out_dir, err)
                # A resume at another data-parallel size converts first, and the conversion checks its own (larger) need.
                if problem is None and prepared.reshape is None:
                    with contextlib.suppress(OSError):  # a folder it cannot read: each save checks again
                        # A pipeline's save estimates from its rank 0's stage alone: the whole model would ask more.
                        whole = (
                            parameters_at_least(prepared.run.model)
                            if prepared.run.train.pipeline_parallel_size == 1
                            else None
                        )
                        problem = checkpoint_space.startup_space_problem(
                            out_dir / checkpoint.CHECKPOINTS, resumed_step, whole
                        )
                if options.progress and problem is None:
                    _log.info(
                        "effective config (also in " + str(out_dir / "config.yaml") + "):\n" + prepared.run.to_yaml()
                    )
            agreement.stop_all_if_any_failed(problem)
        return Trainer(prepared, options).fit()
    finally:
        if lock is not None:
            lock.release()
        if dist.is_initialized():
            dist.destroy_process_group()


def _setup_failed(out_dir: Path, err: OSError) -> str:
    """Rank 0's line for an OSError of its --out setup (lineage, run_id.json, config.yaml). --out moved (mv) or
    removed between the run's lock and these writes (the run holds the folder from its lock: out_moved) had read
    'cannot set up --out ... (No such file or directory ...); free space or fix permissions there', a wrong fix."""
    new = out_moved.new_place(out_dir)
    if new is not None:
        return (
            f"cannot set up --out {out_dir}: the folder was moved to {new} as the run started; run the same command "
            f"with --out {new}"
        )
    if out_moved.gone(out_dir) is not None:
        return (
            f"cannot set up --out {out_dir}: the folder was removed as the run started (deleted, or moved to another "
            "filesystem); run the same command again with --out naming the folder to use"
        )
    return f"cannot set up --out {out_dir} ({_os_error(err)}); free space or fix permissions there and run again"


def _os_error(err: OSError) -> str:
    """One line for an OSError of the --out setup. shutil.copytree (the earlier lineage's tensorboard/ copied on an
    older --resume) raises shutil.Error, whose argument is a list of (source, destination, why) for every file it
    could not copy: printed as it was, the line held a raw Python list of tuples. It names the first one."""
    failed = err.args[0] if isinstance(err, shutil.Error) and err.args else None
    if not isinstance(failed, list) or not failed or not all(isinstance(f, tuple) and len(f) == 3 for f in failed):
        return str(err)
    source, destination, why = failed[0]
    for named in (f": {source!r} -> {destination!r}", f": {destination!r}", f": {source!r}"):  # str(OSError)'s paths
        why = why.removesuffix(named)
    more = f" (and {len(failed) - 1} more file(s))" if len(failed) > 1 else ""
    return f"cannot copy {source} to {destination}: {why}{more}"


def _warn_if_other_config(out_dir: Path, config_path: Path, config_sha256: str | None) -> None:
    """Rank 0's "--out holds a run trained from another config" warning. Rank 0 alone reads the folder's record,
    between two startup agreements: an error there (a config_source_absolute with a NUL byte made Path.resolve
    raise ValueError) raised on rank 0 alone, and the other ranks waited in the next agreement (under NCCL until
    train.dist_timeout_s). A warning neither stops the run nor splits the ranks: it is skipped with a line why."""
    try:
        foreign = other_config_warning(out_dir, config_path, config_sha256)
    except Exception as err:  # noqa: BLE001 (any error: rank 0 alone is here)
        _log.warning(
            f"warning: cannot compare the config file recorded in {out_dir} with {config_path} "
            f"({type(err).__name__}: {err}); no warning about another config's run is given"
        )
        return
    if foreign:
        _log.warning("warning: " + foreign)
