"""Checkpoints: atomic saves with a verified manifest, loading that runs no code, universal conversions.

The layout of the checkpoints folder (step_N, step_N.tmp-save, latest, ...) is defined in
ngpt_ds.train.checkpoint_layout, re-exported here; deleting (retention, leftovers) is in
ngpt_ds.train.checkpoint_delete.

A save is atomic: DeepSpeed writes under the temporary tag, the ranks hash its files (each file by one
rank), rank 0 writes the `COMPLETE` manifest (relative path, size, blake2b digest of the full content)
and renames the folder into place. A kill at any moment leaves either the previous complete
checkpoints or the new one. Before loading, the manifest is checked again, so a file damaged later
(a truncated copy, a bad disk) is found before DeepSpeed reads it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

from ngpt_ds import log
from ngpt_ds.train.checkpoint_delete import (
    converted_from,
    discard,
    discard_or_warn,
    keep_aside,
    kept_warning,
    mark_written,
    move_out_kept,
    remove,
    retention,
    written_here,
)
from ngpt_ds.train.checkpoint_files import check_files_on_all_ranks as check_files_on_all_ranks
from ngpt_ds.train.checkpoint_interrupted import seal_record
from ngpt_ds.train.checkpoint_layout import ABANDONED_PREFIX as ABANDONED_PREFIX
from ngpt_ds.train.checkpoint_layout import CHECKPOINTS as CHECKPOINTS
from ngpt_ds.train.checkpoint_layout import COMPLETE as COMPLETE
from ngpt_ds.train.checkpoint_layout import DELETE_SUFFIX as DELETE_SUFFIX
from ngpt_ds.train.checkpoint_layout import LATEST as LATEST
from ngpt_ds.train.checkpoint_layout import LEFTOVER_SUFFIXES as LEFTOVER_SUFFIXES
from ngpt_ds.train.checkpoint_layout import RECOVERY_SCRIPTS as RECOVERY_SCRIPTS
from ngpt_ds.train.checkpoint_layout import REPLACED_SUFFIX as REPLACED_SUFFIX
from ngpt_ds.train.checkpoint_layout import TAG_PREFIX as TAG_PREFIX
from ngpt_ds.train.checkpoint_layout import TEMP_SUFFIX as TEMP_SUFFIX
from ngpt_ds.train.checkpoint_layout import UNIVERSAL_SUFFIX as UNIVERSAL_SUFFIX
from ngpt_ds.train.checkpoint_layout import complete_checkpoints as complete_checkpoints
from ngpt_ds.train.checkpoint_layout import is_leftover_name as is_leftover_name
from ngpt_ds.train.checkpoint_layout import is_step_dir as is_step_dir
from ngpt_ds.train.checkpoint_layout import is_step_name as is_step_name
from ngpt_ds.train.checkpoint_layout import moved_aside as moved_aside
from ngpt_ds.train.checkpoint_layout import point_latest as point_latest
from ngpt_ds.train.checkpoint_layout import restore_moved_aside as restore_moved_aside
from ngpt_ds.train.checkpoint_layout import step_dirs as step_dirs
from ngpt_ds.train.checkpoint_layout import step_of as step_of
from ngpt_ds.train.checkpoint_layout import tag_for as tag_for
from ngpt_ds.train.checkpoint_layout import universal_dirs as universal_dirs
from ngpt_ds.train.checkpoint_layout import universal_name as universal_name
from ngpt_ds.train.checkpoint_layout import universal_source as universal_source
from ngpt_ds.train.checkpoint_layout import universal_step as universal_step
from ngpt_ds.train.checkpoint_load import load as load
from ngpt_ds.train.checkpoint_space import BYTES_PER_PARAMETER_ESTIMATE as BYTES_PER_PARAMETER_ESTIMATE
from ngpt_ds.train.checkpoint_space import previous_size
from ngpt_ds.train.fs_errors import describe, gib, is_write_failure
from ngpt_ds.train.manifest import (
    build_manifest,
    digest_share,
    digests,
    file_sizes,
    manifest_of,
    marker_digest,
    read_manifest,
    write_manifest,
)
from ngpt_ds.train.manifest import checkpoint_bytes as checkpoint_bytes
from ngpt_ds.train.manifest import fsync_dir as fsync_dir
from ngpt_ds.train.manifest import is_legacy as is_legacy
from ngpt_ds.train.manifest import legacy_warning as legacy_warning
from ngpt_ds.train.manifest import verify as verify
from ngpt_ds.train.out_moved import gone, hold, remove_recreated

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

_log = log.get(__name__)

WRITE_FAILED_EXIT_CODE = 74
"""launch/train.py's exit status when a checkpoint cannot be written (sysexits' EX_IOERR): disk full,
a read-only or unwritable --out. The previous complete checkpoints are intact."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (no space, read-only, permission). Every rank raises it together;
    nothing partial is left under a step_N name."""


Verify = Callable[[Path], str | None]
"""A checkpoint folder -> None when intact, else one line naming the bad file: `verify` (this process
reads every file) or ngpt_ds.train.resume.verify_on_all_ranks (each file read by one rank). Choosing the
checkpoint to resume from is ngpt_ds.train.resume's job."""


def _estimate_bytes(engine: DeepSpeedEngine) -> int:
    params = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())
    return params * BYTES_PER_PARAMETER_ESTIMATE * max(1, int(getattr(engine, "mp_world_size", 1) or 1))


def _need(engine: DeepSpeedEngine, checkpoint_dir: Path, step: int) -> tuple[int, str]:
    """About how many bytes the checkpoint of `step` takes, and on what basis: the size of the run's newest
    complete checkpoint (checkpoint_space.previous_size), else BYTES_PER_PARAMETER_ESTIMATE per parameter
    (counted only then: a save with no engine, in tests, goes by the previous checkpoint)."""
    return previous_size(checkpoint_dir, step) or (
        _estimate_bytes(engine),
        f"{BYTES_PER_PARAMETER_ESTIMATE} bytes per parameter",
    )


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""A write refused for space: the filesystem full, the user's quota spent, a file-size limit."""


def _space_figures(err: BaseException, engine: DeepSpeedEngine, checkpoint_dir: Path, step: int) -> str:
    """For a write that failed for space (DISK_FULL_ERRNOS; torch's zip writer, which gives no errno): what the
    checkpoint needs and what was free on this rank's filesystem when it failed, naming the folder; else ''.
    A full disk had read 'No space left on device (<file>)' alone: no figure to free space or size a quota by.
    A write past the process's file-size limit (`ulimit -f`), or past the largest file of the filesystem (EFBIG
    with no limit), is named as such: a full disk's fix, to free space, changes nothing there."""
    full = isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS
    if not full and not (is_write_failure(err) and not isinstance(err, OSError)):
        return ""
    try:
        need, basis = _need(engine, checkpoint_dir, step)
        free_bytes = shutil.disk_usage(checkpoint_dir).free
        # describe() already gives the free space with torch's failure
        free = f", {gib(free_bytes)} were free" if full else ""
    except Exception:  # a figure that cannot be had: the message without it
        return ""
    too_large = isinstance(err, OSError) and err.errno == errno.EFBIG
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and limit < need and (too_large or free_bytes >= need):
        # A write past the limit fails (EFBIG; torch's zip writer: 'unexpected pos') with the disk far from full:
        # the message had said to free space there, with 70 GiB free. A limit of at least the whole checkpoint
        # cannot be what one of its files passed (a spent quota, not seen in the free space, fails the same way).
        return (
            f"; this process may write no file over {gib(limit)} (its file-size limit: `ulimit -f` in the shell or "
            f"job script that started it); the checkpoint needs about {gib(need)} ({basis}){free} on the filesystem "
            f"of {checkpoint_dir}. Raise the limit (`ulimit -f unlimited` before the launch), then resume"
        )
    if too_large:  # no limit of the process: the filesystem's largest file (FAT32's is 4 GiB)
        return (
            f"; a file of the checkpoint (about {gib(need)} in all, {basis}) is larger than the filesystem of "
            f"{checkpoint_dir} takes. Put --out on another filesystem, then resume"
        )
    return (
        f"; the checkpoint needs about {gib(need)} ({basis}){free} on the filesystem of {checkpoint_dir} "
        "when the write failed. Free space there (or raise the quota), or lower keep_checkpoints, then resume"
    )


class WordedOSError(OSError):
    """An OSError without an errno whose text is already the whole line for the user (a case ngpt_ds checks and
    words itself): `log_unexpected` logs no traceback for it."""


def log_unexpected(err: BaseException, doing: str) -> None:
    """Log the traceback of `err` once, on this rank's stderr (the run's log), where it is an error no check words:
    not an OSError with its errno nor torch's failed write, which `describe` gives whole, but a bug in ngpt_ds or a
    library, which the problem every rank prints gives as 'Type: text' alone. Such a line had left an operator nothing
    to send. As collectives.all_answers does: errors pass the rank filter of ngpt_ds.log on every rank."""
    worded = isinstance(err, WordedOSError)
    known = worded or (is_write_failure(err) and not (isinstance(err, OSError) and err.errno is None))
    if not known:
        _log.error(f"rank {dist.get_rank() if dist.is_initialized() else 0}: {doing} failed", exc_info=err)


def _foreign_moved_aside(leftover: Path, final: Path) -> bool:
    """A complete checkpoint folder (not a link) moved out of a step_N name this process did not place, and left
    there by a kill: `_finish_save` moves only the run's own step there, but a restarted process cannot tell
    (nor can it tell the copies an older ngpt_ds moved there), so it is kept, never deleted."""
    return (
        leftover.name.endswith(REPLACED_SUFFIX)
        and not leftover.is_symlink()
        and leftover.is_dir()
        and (leftover / COMPLETE).is_file()
        and not written_here(final)
    )


def _before_save(engine: DeepSpeedEngine, checkpoint_dir: Path, step: int) -> str | None:
    """Rank 0: put back a checkpoint an interrupted save moved aside, remove the leftovers of interrupted
    saves and deletes and check the free space. Returns a problem or None.

    A leftover fails the save only when it holds a name this save writes (its step's .tmp-save and
    .tmp-replaced) and that name cannot be freed (a folder is renamed to .tmp-delete, then removed); any
    other is removed best-effort, with one warning naming what could not be removed and why. One
    undeletable leftover of another step (.nfsXXXX files on NFS that a rank of a killed job still holds,
    another user's files, an immutable file) had failed every later save, after a whole checkpoint
    interval of training each time. DeepSpeed's recovery scripts are removed only for a save that goes on.
    A complete step_N.tmp-replaced this process did not write (a kill right after `_finish_save` moved a
    copied-in step_N aside) is never removed: it is kept by checkpoint_delete.keep_aside, with a warning."""
    tag = tag_for(step)
    own = (tag + TEMP_SUFFIX, tag + REPLACED_SUFFIX)
    try:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        restore_moved_aside(checkpoint_dir)  # before the loop below removes what is left under .tmp-replaced
        for leftover in sorted(checkpoint_dir.iterdir()):
            if not is_leftover_name(leftover.name):
                continue
            final = leftover.with_name(leftover.name[: -len(REPLACED_SUFFIX)])
            if _foreign_moved_aside(leftover, final):  # a kill before `_finish_save` kept it: kept now, never deleted
                keep_aside(leftover, final)  # warns either way
                if leftover.name in own and (leftover.exists() or leftover.is_symlink()):
                    return (
                        f"cannot prepare {checkpoint_dir} for the checkpoint of step {step}: {leftover} holds a "
                        "checkpoint this run did not write, and it could not be renamed to be kept (see the "
                        "warning). Move it elsewhere, then rerun"
                    )
                continue
            held = discard(leftover)
            if held is not None and leftover.name in own:
                return (
                    f"cannot prepare {checkpoint_dir} for the checkpoint of step {step}: {leftover}, left by an "
                    f"interrupted save of this step, holds a name this save writes and could not be removed: "
                    f"{held}. Remove it, then rerun"
                )
            if held is not None:
                _log.warning(
                    f"warning: could not remove {leftover}, left by an interrupted save or delete: {held}. The "
                    "next save tries again"
                )
        need, basis = _need(engine, checkpoint_dir, step)
        free = shutil.disk_usage(checkpoint_dir).free
        if free < need:
            stuck = [p.name for p in sorted(checkpoint_dir.iterdir()) if is_leftover_name(p.name)]
            left = f"; {', '.join(stuck)} could not be removed (see the warnings)" if stuck else ""
            return (
                f"not enough free space for the checkpoint of step {step}: it needs about {gib(need)} ({basis}), "
                f"{gib(free)} are free on the filesystem of {checkpoint_dir}{left}. Nothing was written"
            )
        for script in RECOVERY_SCRIPTS:  # only for a save that goes on: a refused one leaves them
            # DeepSpeed writes them again: through a link planted in a run folder someone handed over it
            # overwrote the file the link names (~/.bashrc; any file for a trainer run as root) and made it
            # executable; into a hard link (a folder copied with `cp -al`), the other folder's file. So one
            # that cannot be removed fails the save.
            if (checkpoint_dir / script).exists() or (checkpoint_dir / script).is_symlink():
                remove(checkpoint_dir / script)
    except OSError as err:
        return f"cannot prepare {checkpoint_dir} for the checkpoint of step {step}: " + describe(err, checkpoint_dir)
    return None


def _hash_on_all_ranks(folder: Path, step: int, seal: Callable[[], None]) -> tuple[dict[str, Any] | None, str | None]:
    """Collective, once every rank's files are written: rank 0 runs `seal` (it adds config.yaml) and lists
    the folder, every rank hashes its manifest.digest_share of the files (each file by one rank, about
    1/world of the bytes), and the digests are gathered. Returns (the manifest, None), or (None, the
    first problem: the same on every rank)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    listing: list[Any] = [None]
    if rank == 0:
        try:
            seal()
            listing[0] = file_sizes(folder)
        except Exception as err:  # any error: rank 0 alone raising would leave the others in the broadcast
            log_unexpected(err, f"finishing {folder}")
            listing[0] = f"finishing {folder}: {describe(err, folder.parent)}"
    dist.broadcast_object_list(listing, src=0)
    if isinstance(listing[0], str):
        return None, listing[0]
    sizes: dict[str, int] = listing[0]
    try:
        answer: tuple[dict[str, str], str | None] = (digests(folder, digest_share(sizes, rank, world)), None)
    except Exception as err:  # an answer on every rank, so that no rank leaves the all_gather
        log_unexpected(err, f"hashing {folder}")
        answer = ({}, f"hashing {folder}: {describe(err, folder.parent)}")
    answers: list[Any] = [None] * world
    dist.all_gather_object(answers, answer)
    problem = next(((f"rank {r}: {p}" if world > 1 else p) for r, (_, p) in enumerate(answers) if p), None)
    if problem is not None:
        return None, problem
    gathered = {name: digest for part, _ in answers for name, digest in part.items()}
    return manifest_of(step, sizes, gathered), None


def _write_config(folder: Path, config_yaml: str) -> None:
    (folder / "config.yaml").write_text(config_yaml, encoding="utf-8")


def _sync_or_warn(folder: Path, placed: Path) -> None:
    """fsync `folder` once `placed` was renamed into it. The rename is done and visible to every reader: a
    failing folder sync (EIO from a flaky NFS or FUSE mount) only leaves the new name less durable across a
    crash of the machine. A warning names the folder and the
    run goes on: it had stopped the run with exit 74 ('not saved') with the complete checkpoint in place."""
    try:
        fsync_dir(folder)
    except OSError as err:
        _log.warning(
            f"warning: {placed} is complete and in place, but {folder} could not be synced "
            f"({describe(err, folder)}): a crash of the machine before the filesystem writes it may lose the "
            "new name. Training goes on"
        )


def _finish_save(checkpoint_dir: Path, tmp: Path, tag: str, manifest: dict[str, Any], keep: int) -> None:
    """Rank 0: the manifest, then rename into place, then `latest`, then retention.

    A step_N folder this process wrote (checkpoint_delete.written_here: a second save of the same step) is
    moved aside (step_N.tmp-replaced: put back if a kill leaves no step_N) before the new one takes the name,
    and deleted once the new one is in place. Any other is a checkpoint put there during the run under the
    step being saved (the run's lineage holds no step above the one it resumed from, ngpt_ds.train.lineage):
    it is renamed straight to the name it is kept under (checkpoint_delete.move_out_kept), with a warning.
    Such a copy had been deleted; then, moved aside as step_N.tmp-replaced, a kill before the next rename had
    let the next start-up put it back as this run's step N."""
    step, final = manifest["step"], checkpoint_dir / tag
    own = written_here(final) and (final.exists() or final.is_symlink())
    write_manifest(tmp, {**manifest, **seal_record(checkpoint_dir, final, own=own)})  # restarts tell it
    replaced = kept = None
    if own:  # this process's own: replaced
        replaced = checkpoint_dir / (tag + REPLACED_SUFFIX)
        os.rename(final, replaced)
    elif final.exists() or final.is_symlink():  # not this run's: straight to the name it is kept under
        kept = move_out_kept(final)  # never via .tmp-replaced, which a restart puts back as this run's step N
    os.rename(tmp, final)
    # The checkpoint is in place: from here on a failure only leaves `latest` on an older complete tag, or an
    # old folder in place (a warning says which and why; the next save tries again).
    _sync_or_warn(checkpoint_dir, final)
    if replaced is not None:  # renamed away first: never put back half of it
        discard_or_warn(replaced)
    if kept is not None:
        kept_warning(final, kept)
    mark_written(final)
    with contextlib.suppress(OSError):
        point_latest(checkpoint_dir, step)
    try:
        retention(checkpoint_dir, step, keep)
    except OSError as err:  # listing the folder: the save is complete, only older folders stay
        _log.warning(f"warning: retention in {checkpoint_dir} stopped: {describe(err, checkpoint_dir)}")


def _seal_universal(converted: Path, source: Path) -> None:
    shutil.copy2(source / "config.yaml", converted / "config.yaml")
    (converted.parent / "latest_universal").unlink(missing_ok=True)  # the converter's pointer; not needed


def _place_universal(converted: Path, target: Path, source: Path, manifest: dict[str, Any]) -> None:
    """Seal `converted` and rename it to `target`. A folder already at `target` is deleted only when this process
    placed it or ngpt_ds converted it from exactly `source` (a damaged conversion of the same checkpoint: the
    same data, made again); any other (converted by hand with DeepSpeed's ds_to_universal, no manifest; or
    copied in from another run) is renamed to <name>.not-this-run-<UTC time> and kept, with a warning, as
    retention keeps it (checkpoint_delete.retention). It had been deleted."""
    manifest["converted_from"] = {"name": source.name, "complete_blake2b": marker_digest(source)}
    write_manifest(converted, manifest)
    kept = None
    if written_here(target) or converted_from(target, source):  # an older or damaged conversion: replaced whole
        # renamed away first, like every delete: a kill mid-way leaves no half of it under its name
        held = discard(target)
        if held is not None:
            raise WordedOSError(f"{target} could not be replaced: {held}")
    elif target.exists() or target.is_symlink():
        kept = move_out_kept(target)  # in one rename: a kill leaves it whole under the name it is kept under
    os.rename(converted, target)
    mark_written(target)
    _sync_or_warn(target.parent, target)
    if kept is not None:
        _log.warning(
            f"warning: {target} was there and is not a conversion ngpt_ds made of {source.name} (converted by hand "
            f"with DeepSpeed's ds_to_universal, or copied in): it was moved to {kept} and kept; the run's own "
            f"conversion took the name {target.name}. Move {kept.name} elsewhere, or remove it yourself"
        )


def finish_universal(converted: Path, target: Path, source: Path) -> None:
    """One process: seal a converted folder like a save (the source's config.yaml, a manifest naming the
    source's manifest, rename into place). `converted` lies in the same checkpoints folder."""
    _seal_universal(converted, source)
    _place_universal(converted, target, source, build_manifest(converted, step_of(source.name)))


def finish_universal_on_all_ranks(converted: Path, target: Path, source: Path) -> str | None:
    """Collective `finish_universal`: the ranks hash the converted files together (each file by one
    rank, as a save), then rank 0 writes the manifest and renames. Returns the first problem, the same
    on every rank, or None; on a problem nothing is placed at `target`."""
    manifest, problem = _hash_on_all_ranks(converted, step_of(source.name), lambda: _seal_universal(converted, source))
    if problem is not None:
        return problem
    if dist.get_rank() == 0:
        assert manifest is not None  # _hash_on_all_ranks returns one with no problem
        try:
            _place_universal(converted, target, source, manifest)
        except Exception as err:  # any error reaches every rank through _agree
            log_unexpected(err, f"writing {target}")
            problem = f"writing {target}: {describe(err, target.parent)}"
    return _agree(problem)


def is_converted_from(target: Path, source: Path, verify: Verify = verify) -> bool:
    """An intact step_N-universal folder converted from exactly this `source` checkpoint. With
    `verify_on_all_ranks` every rank calls it, and each file is hashed by one rank."""
    if verify(target) is not None:  # also when there is no COMPLETE (not converted yet)
        return False
    origin = (read_manifest(target) or {}).get("converted_from") or {}
    source_digest = marker_digest(source)
    return (
        source_digest is not None
        and origin.get("name") == source.name
        and origin.get("complete_blake2b") == source_digest
    )


def _agree(problem: str | None) -> str | None:
    """Every rank learns the first problem any rank had (one collective, after the same point on all)."""
    problems: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)
    return next(((f"rank {r}: {p}" if dist.get_world_size() > 1 else p) for r, p in enumerate(problems) if p), None)


def save(
    engine: DeepSpeedEngine, out_dir: Path, step: int, client_state: dict[str, Any], keep: int, config_yaml: str
) -> Path:
    """Save on every rank into a temporary tag; the ranks hash its files together (each file by one
    rank), and rank 0 writes the manifest and renames the folder into place.

    Raises CheckpointWriteError on every rank when the save cannot be completed (too little free space,
    checked first; a write error on any rank); no step_N folder is then created or changed.
    """
    checkpoint_dir = out_dir / CHECKPOINTS
    tag = tag_for(step)
    tmp_tag = tag + TEMP_SUFFIX
    tmp = checkpoint_dir / tmp_tag
    rank = dist.get_rank()
    problem = None
    hold(out_dir)  # the run's folder, wherever an `mv` takes it during this save (ngpt_ds.train.out_moved)
    if rank == 0:
        try:
            problem = gone(out_dir) or _before_save(engine, checkpoint_dir, step)
        except Exception as err:  # any error reaches every rank through _agree
            log_unexpected(err, f"preparing {checkpoint_dir}")
            problem = f"cannot prepare {checkpoint_dir} for the checkpoint of step {step}: {type(err).__name__}: {err}"
    problem = _agree(problem)
    if problem is not None:
        raise CheckpointWriteError(f"checkpoint of step {step} not saved: {problem}")

    problem = None
    try:
        engine.save_checkpoint(str(checkpoint_dir), tag=tmp_tag, client_state=client_state, save_latest=False)
    except Exception as err:
        # --out moved before a file's write: torch's zip writer raises 'RuntimeError: Parent directory ... does not
        # exist', which had stopped the run with a traceback
        if not is_write_failure(err) and gone(out_dir) is None:
            raise
        problem = f"writing {tmp}: {describe(err, checkpoint_dir)}{_space_figures(err, engine, checkpoint_dir, step)}"
        # DeepSpeed's collectives all precede its writes; the others wait in its closing barrier.
        dist.barrier()
    if rank == 0:  # moved during DeepSpeed's writes: its makedirs made the old path again and wrote the rest there
        problem = gone(out_dir) or problem
    problem = _agree(problem)
    manifest = None
    if problem is None:  # the same on every rank: all take these collectives, or none
        manifest, problem = _hash_on_all_ranks(tmp, step, lambda: _write_config(tmp, config_yaml))
    if problem is None:
        if rank == 0:
            assert manifest is not None  # _hash_on_all_ranks returns one with no problem
            try:
                _finish_save(checkpoint_dir, tmp, tag, manifest, keep)
            except Exception as err:  # any error reaches every rank through _agree
                log_unexpected(err, f"finishing {checkpoint_dir / tag}")
                problem = (
                    f"finishing {checkpoint_dir / tag}: {describe(err, checkpoint_dir)}"
                    f"{_space_figures(err, engine, checkpoint_dir, step)}"
                )
            else:  # `gone` notes step_N as the newest complete checkpoint while --out is in place: a line about
                # --out removed before the next save named the one before (noted only at a save's start)
                gone(out_dir)
        problem = _agree(problem)
    if problem is not None:
        # a failure of a save whose --out was moved says so: 'No such file or directory' had named neither
        moved = _agree(gone(out_dir) if rank == 0 else None)
        problem = moved or problem
        if rank == 0 and moved:
            remove_recreated(out_dir, tmp)
        elif rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # a .tmp-save name is never resumed from anyway
        raise CheckpointWriteError(f"checkpoint of step {step} not saved: {problem}")
    return checkpoint_dir / tag
