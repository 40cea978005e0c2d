"""Checkpoints: the on-disk layout, atomic saves with a verified manifest, retention, auto-resume.

Layout of a run folder's checkpoints (the one place that defines it; inference uses it too):

    <out>/checkpoints/step_00000200/           DeepSpeed's files + config.yaml + COMPLETE (the manifest)
    <out>/checkpoints/step_00000200.tmp-save/  a save in progress; never resumed from, removed by the next save
    <out>/checkpoints/step_00000200.tmp-replaced/
                                               step_00000200 moved aside by a second save of step 200: put
                                               back if a kill left no step_00000200, else removed
    <out>/checkpoints/step_00000100.tmp-delete/
                                               a folder being deleted (retention, a replaced step, ...):
                                               renamed first, so no step_N name ever holds half of one;
                                               never resumed, listed or exported; what cannot be removed
                                               is tried again at each save, with a warning naming the file
    <out>/checkpoints/latest                   DeepSpeed's pointer: always the newest complete tag
    <out>/checkpoints/zero_to_fp32.py          DeepSpeed's recovery scripts, which each save writes again
    <out>/checkpoints/zero_to_torch.py         (deepspeed 0.19: engine._copy_recovery_script, on global rank 0)
    <out>/checkpoints/abandoned-<UTC time>/    checkpoints of an earlier lineage, moved aside, never deleted
                                               (ngpt_ds.train.lineage)
    <out>/checkpoints/step_00000200-universal/ step_00000200 converted for another data-parallel size
                                               (ngpt_ds.train.reshape); never a step_N name, so never resumed
                                               or exported as one; removed with its step by retention

A save is atomic: DeepSpeed writes under the temporary tag, the ranks hash its files (each file by one
rank), rank 0 writes the `COMPLETE` manifest (relative path, size, blake2b digest of the full content)
and renames the folder into place. A kill at any moment leaves either the previous complete
checkpoints or the new one. Before loading, the manifest is checked again, so a file damaged later
(a truncated copy, a bad disk) is found before DeepSpeed reads it.

A delete is atomic too: a checkpoint leaves its step_N name in one rename (to step_N.tmp-delete) before any
of its files is removed. A kill, or a file that cannot be removed (NFS's .nfsXXXX files of a process still
holding one, another user's files, an immutable file), leaves a folder no reader takes for a checkpoint; the
next save removes the rest, with one warning naming the file and the reason. A leftover that cannot be
removed fails a save only when it holds a name that save writes (its own step_N.tmp-save, step_N.tmp-replaced)
and cannot be renamed either.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from ngpt_ds import log, safe_load
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.manifest import COMPLETE as COMPLETE
from ngpt_ds.train.manifest import (
    build_manifest,
    digest_share,
    digests,
    file_sizes,
    manifest_of,
    marker_digest,
    read_manifest,
    replace_file,
    write_manifest,
)
from ngpt_ds.train.manifest import checkpoint_bytes as checkpoint_bytes
from ngpt_ds.train.manifest import fsync_dir as fsync_dir
from ngpt_ds.train.manifest import is_legacy as is_legacy
from ngpt_ds.train.manifest import legacy_warning as legacy_warning
from ngpt_ds.train.manifest import verify as verify

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

_log = log.get(__name__)

CHECKPOINTS = "checkpoints"
TAG_PREFIX = "step_"
TEMP_SUFFIX = ".tmp-save"
"""DeepSpeed writes into step_N.tmp-save; never a step_N name, so nothing resumes from a half-written save."""
REPLACED_SUFFIX = ".tmp-replaced"
"""An existing step_N moved aside for a second save of the same step; removed once the new one is in place,
put back when a kill left no step_N (`restore_moved_aside`)."""
DELETE_SUFFIX = ".tmp-delete"
"""A folder being deleted (an old step_N, a step_N-universal, a moved-aside step_N) is first renamed to
<name>.tmp-delete (<name>.<k>.tmp-delete when that is taken), then removed: a delete cut short (a kill, a
file that cannot be removed) never leaves part of a checkpoint, COMPLETE manifest and all, under its name."""
LEFTOVER_SUFFIXES = (TEMP_SUFFIX, REPLACED_SUFFIX, DELETE_SUFFIX)
"""step_* names ending so are never resumed, listed or exported; each save removes them (`_before_save`)."""
RECOVERY_SCRIPTS = ("zero_to_fp32.py", "zero_to_torch.py")
"""Copied into checkpoints/ by DeepSpeed at each save with shutil.copyfile, which follows a link at the
destination, and then made executable."""
ABANDONED_PREFIX = "abandoned-"
UNIVERSAL_SUFFIX = "-universal"
"""step_N-universal: DeepSpeed's universal form of step_N, made to resume it at another data-parallel size."""
LATEST = "latest"
BYTES_PER_PARAMETER_ESTIMATE = 16
"""First-save size estimate: weights (4) + fp32 master (4) + two Adam moments (8) bytes per parameter."""
WRITE_FAILED_EXIT_CODE = 74
"""launch/train.py's exit status when a checkpoint cannot be written (sysexits' EX_IOERR): disk full,
a read-only or unwritable --out. The previous complete checkpoints are intact."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (no space, read-only, permission). Every rank raises it together;
    nothing partial is left under a step_N name."""


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def step_of(tag: str) -> int:
    return int(tag[len(TAG_PREFIX) :])


def is_step_name(name: str) -> bool:
    """step_ and ASCII digits 0-9 only: the names `step_of` reads. str.isdigit also takes other scripts'
    digits and superscripts ('step_²'), which int() refuses: one such folder made every listing raise."""
    digits = name[len(TAG_PREFIX) :]
    return name.startswith(TAG_PREFIX) and digits.isascii() and digits.isdecimal()


def is_step_dir(path: Path) -> bool:
    """A step_N folder (complete or not); temporary and abandoned folders never match."""
    return is_step_name(path.name) and path.is_dir()


def step_dirs(checkpoint_dir: Path) -> list[Path]:
    """Every step_N folder, complete or not, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted((d for d in checkpoint_dir.iterdir() if is_step_dir(d)), key=lambda d: step_of(d.name))


def universal_name(tag: str) -> str:
    return tag + UNIVERSAL_SUFFIX


def universal_source(path: Path) -> Path | None:
    """The step_N folder a step_N-universal folder was converted from (None for any other name)."""
    name = path.name
    if not name.endswith(UNIVERSAL_SUFFIX):
        return None
    source = path.with_name(name[: -len(UNIVERSAL_SUFFIX)])
    return source if is_step_name(source.name) else None


def universal_step(universal_dir: Path) -> int:
    """The step of the checkpoint a `universal_dirs` entry was converted from."""
    source = universal_source(universal_dir)
    assert source is not None  # universal_dirs lists only folders that name their source
    return step_of(source.name)


def universal_dirs(checkpoint_dir: Path) -> list[Path]:
    """Every step_N-universal folder (complete or not), oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = [d for d in checkpoint_dir.iterdir() if d.is_dir() and universal_source(d) is not None]
    return sorted(found, key=universal_step)


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoint directories (with a COMPLETE marker), oldest first. Not yet verified: see `verify`."""
    return [d for d in step_dirs(checkpoint_dir) if (d / COMPLETE).is_file()]


Verify = Callable[[Path], str | None]
"""A checkpoint folder -> None when intact, else one line naming the bad file: `verify` (this process
reads every file) or ngpt_ds.train.resume.verify_on_all_ranks (each file read by one rank). Choosing the
checkpoint to resume from is ngpt_ds.train.resume's job."""


# ---- saving ---------------------------------------------------------------------------------------


def point_latest(checkpoint_dir: Path) -> None:
    """DeepSpeed's `latest` file names the newest complete tag, or does not exist."""
    complete = complete_checkpoints(checkpoint_dir)
    latest = checkpoint_dir / LATEST
    if not complete:
        latest.unlink(missing_ok=True)
        return
    # latest.tmp created new, never through a link planted there; removed when the write fails (disk full)
    replace_file(latest, complete[-1].name.encode("utf-8"))


#: What torch.save's zip writer says when the file under it fails (it raises RuntimeError, no errno).
TORCH_WRITE_FAILURES = ("PytorchStreamWriter", "inline_container", "iostream error", "file write failed")


def _describe(err: BaseException, folder: Path) -> str:
    """An OSError by its errno's text and file; torch's zip writer's failure with the free space; any other
    error (an OSError without an errno, such as shutil's; a bug; a RecursionError on a crafted folder) by its
    type and text, so that it can travel to every rank as a problem."""
    if isinstance(err, OSError) and err.errno is not None:
        where = f" ({err.filename})" if err.filename else ""
        return f"{os.strerror(err.errno)}{where}"
    if not _is_torch_write_failure(err):
        return f"{type(err).__name__}: {str(err).strip()}"
    text = f"torch.save failed ({str(err).strip()})"
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return text
    full = ": no space left on device" if free < 2**20 else ""
    return f"{text}; {_gib(free)} free on the filesystem{full}"


def _is_write_failure(err: BaseException) -> bool:
    """An OSError, or torch's zip writer reporting a failed write."""
    return isinstance(err, OSError) or _is_torch_write_failure(err)


def _is_torch_write_failure(err: BaseException) -> bool:
    return isinstance(err, RuntimeError) and any(marker in str(err) for marker in TORCH_WRITE_FAILURES)


def _estimate_bytes(engine: DeepSpeedEngine) -> int:
    params = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())
    return params * BYTES_PER_PARAMETER_ESTIMATE * max(1, int(getattr(engine, "mp_world_size", 1) or 1))


def _gib(n: float) -> str:
    return f"{n / 2**30:.3f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _before_save(engine: DeepSpeedEngine, checkpoint_dir: Path, step: int) -> str | None:
    """Rank 0: put back a checkpoint an interrupted save moved aside, remove the leftovers of interrupted
    saves and deletes and check the free space. Returns a problem or None.

    A leftover fails the save only when it holds a name this save writes (its step's .tmp-save and
    .tmp-replaced) and that name cannot be freed (a folder is renamed to .tmp-delete, then removed); any
    other is removed best-effort, with one warning naming what could not be removed and why. One
    undeletable leftover of another step (.nfsXXXX files on NFS that a rank of a killed job still holds,
    another user's files, an immutable file) had failed every later save, after a whole checkpoint
    interval of training each time. DeepSpeed's recovery scripts are removed only for a save that goes on."""
    tag = tag_for(step)
    own = (tag + TEMP_SUFFIX, tag + REPLACED_SUFFIX)
    try:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        restore_moved_aside(checkpoint_dir)  # before the loop below removes what is left under .tmp-replaced
        for leftover in sorted(checkpoint_dir.iterdir()):
            if not is_leftover_name(leftover.name):
                continue
            held = _discard(leftover)
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
        complete = complete_checkpoints(checkpoint_dir)
        previous = checkpoint_bytes(complete[-1]) if complete else None
        need, basis = (
            (previous, f"the size of {complete[-1].name}")
            if previous is not None
            else (_estimate_bytes(engine), f"{BYTES_PER_PARAMETER_ESTIMATE} bytes per parameter")
        )
        free = shutil.disk_usage(checkpoint_dir).free
        if free < need:
            stuck = [p.name for p in sorted(checkpoint_dir.iterdir()) if is_leftover_name(p.name)]
            left = f"; {', '.join(stuck)} could not be removed (see the warnings)" if stuck else ""
            return (
                f"not enough free space for the checkpoint of step {step}: it needs about {_gib(need)} ({basis}), "
                f"{_gib(free)} are free on the filesystem of {checkpoint_dir}{left}. Nothing was written"
            )
        for script in RECOVERY_SCRIPTS:  # only for a save that goes on: a refused one leaves them
            # DeepSpeed writes them again: through a link planted in a run folder someone handed over it
            # overwrote the file the link names (~/.bashrc; any file for a trainer run as root) and made it
            # executable; into a hard link (a folder copied with `cp -al`), the other folder's file. So one
            # that cannot be removed fails the save.
            if (checkpoint_dir / script).exists() or (checkpoint_dir / script).is_symlink():
                _remove(checkpoint_dir / script)
    except OSError as err:
        return f"cannot prepare {checkpoint_dir} for the checkpoint of step {step}: " + _describe(err, checkpoint_dir)
    return None


def is_leftover_name(name: str) -> bool:
    """step_N.tmp-save, step_N.tmp-replaced, step_N.tmp-delete and step_N-universal.tmp-save (reshape's work
    folder) and the like: what an interrupted save, conversion or delete leaves; never a checkpoint."""
    return name.startswith(TAG_PREFIX) and name.endswith(LEFTOVER_SUFFIXES)


def _remove(path: Path) -> None:
    """Remove a folder with its content, or a file; a link (to a folder, a file, nothing) only itself, never
    what it points to. A link planted as step_N.tmp-save had made every save fail ('Cannot call rmtree on
    a symbolic link')."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def _remove_all(folder: Path) -> list[tuple[str, BaseException]]:
    """Remove a folder with its content (not a link), going on past what cannot be removed. Returns
    (the full path, the error) for each entry left, the deepest first ([] when all is gone). shutil.rmtree's
    own error names only an entry's basename."""
    failed: list[tuple[str, BaseException]] = []

    def keep(path: str | os.PathLike[str], err: BaseException) -> None:
        if not isinstance(err, FileNotFoundError):  # gone already: what was wanted
            failed.append((str(path), err))

    if sys.version_info >= (3, 12):
        shutil.rmtree(folder, onexc=lambda _function, path, err: keep(path, err))
    else:
        shutil.rmtree(folder, onerror=lambda _function, path, info: keep(path, info[1]))
    return failed


def _what_failed(failed: list[tuple[str, BaseException]]) -> str:
    """'<the first error> (<its full path>)', and how many more entries could not be removed. The folders
    left non-empty by those (ENOTEMPTY) are not counted."""
    causes = [(p, e) for p, e in failed if not (isinstance(e, OSError) and e.errno == errno.ENOTEMPTY)] or failed
    path, err = causes[0]
    reason = os.strerror(err.errno) if isinstance(err, OSError) and err.errno else f"{type(err).__name__}: {err}"
    more = f", and {len(causes) - 1} more" if len(causes) > 1 else ""
    return f"{reason} ({path}){more}"


def _deletion_name(path: Path) -> Path:
    """<name>.tmp-delete, or <name>.<k>.tmp-delete (k = 1, 2, ...) when a delete that could not finish holds it."""
    for k in range(1000):
        doomed = path.with_name(f"{path.name}{f'.{k}' if k else ''}{DELETE_SUFFIX}")
        if not doomed.exists() and not doomed.is_symlink():
            return doomed
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(doomed))


def _discard(path: Path) -> str | None:
    """Rank 0: delete a folder of checkpoints/ (a checkpoint, a leftover) or a file or link there, so that no
    reader ever sees part of it under its name: a folder is first renamed to `_deletion_name` (one atomic
    step), then removed best-effort. Returns None when `path`'s name is free, whatever of the content could not
    be removed (a warning names it: the next save tries again); else why the name is still held (nothing of
    a folder was removed then).

    shutil.rmtree(old, ignore_errors=True) had deleted in place, without a word: a delete cut short (a kill,
    an undeletable file) left step_N with its COMPLETE manifest but not all of its files, which --resume auto
    and the listings still took for a checkpoint, and retention kept what derived from it."""
    if path.is_symlink() or not path.is_dir():
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            return _describe(err, path.parent)
        return None
    doomed = path
    if not path.name.endswith(DELETE_SUFFIX):
        try:
            doomed = _deletion_name(path)
            os.rename(path, doomed)
        except OSError as err:
            return f"renaming it to be deleted failed: {_describe(err, path.parent)}"
        try:
            fsync_dir(path.parent)  # the new name on disk before any file goes
        except OSError as err:
            _log.warning(
                f"warning: {path} was renamed to {doomed.name} to be deleted, but the folder could not be "
                f"synced ({_describe(err, path.parent)}); the next save removes it"
            )
            return None
    failed = _remove_all(doomed)
    if failed:
        _log.warning(
            f"warning: could not remove all of {doomed}"
            + (f" (was {path.name})" if doomed != path else "")
            + f": {_what_failed(failed)}. Its files take space on the filesystem until removed; the next save "
            "tries again"
        )
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
            listing[0] = f"finishing {folder}: {_describe(err, folder.parent)}"
    dist.broadcast_object_list(listing, src=0)
    if isinstance(listing[0], str):
        return None, listing[0]
    sizes: dict[str, int] = listing[0]
    try:
        answer: tuple[dict[str, str], str | None] = (digests(folder, digest_share(sizes, rank, world)), None)
    except Exception as err:  # an answer on every rank, so that no rank leaves the all_gather
        answer = ({}, f"hashing {folder}: {_describe(err, folder.parent)}")
    answers: list[Any] = [None] * world
    dist.all_gather_object(answers, answer)
    problem = next(((f"rank {r}: {p}" if world > 1 else p) for r, (_, p) in enumerate(answers) if p), None)
    if problem is not None:
        return None, problem
    gathered = {name: digest for part, _ in answers for name, digest in part.items()}
    return manifest_of(step, sizes, gathered), None


def _write_config(folder: Path, config_yaml: str) -> None:
    (folder / "config.yaml").write_text(config_yaml, encoding="utf-8")


def _finish_save(checkpoint_dir: Path, tmp: Path, tag: str, manifest: dict[str, Any], keep: int) -> None:
    """Rank 0: the manifest, then rename into place, then `latest`, then retention."""
    step = manifest["step"]
    write_manifest(tmp, manifest)
    final = checkpoint_dir / tag
    replaced = None
    if final.exists():  # a second save of the same step: move the old one out of the step_N name first
        replaced = checkpoint_dir / (tag + REPLACED_SUFFIX)
        os.rename(final, replaced)
    os.rename(tmp, final)
    fsync_dir(checkpoint_dir)
    # The checkpoint is in place: from here on a failure only leaves `latest` on an older complete tag, or an
    # old folder in place (a warning says which and why; the next save tries again).
    if replaced is not None:  # renamed away first: half of it left as step_N.tmp-replaced would be put back
        _discard_or_warn(replaced)
    with contextlib.suppress(OSError):
        point_latest(checkpoint_dir)
    try:
        retention(checkpoint_dir, step, keep)
    except OSError as err:  # listing the folder: the save is complete, only older folders stay
        _log.warning(f"warning: retention in {checkpoint_dir} stopped: {_describe(err, checkpoint_dir)}")


def retention(checkpoint_dir: Path, step: int, keep: int) -> None:
    """Rank 0, once step `step` is in place: delete all but the `keep` newest complete checkpoints (step_N
    folders only: the current lineage), the step_N-universal conversions of steps older than every one kept,
    and the step_N folders without a manifest older than `step` (interrupted saves of older ngpt_ds versions).
    Each goes through `_discard`: a delete that fails or is cut short leaves no step_N holding part of a
    checkpoint, and says why in a warning. A checkpoint that cannot even be renamed stays whole, and counts as
    kept."""
    for old in complete_checkpoints(checkpoint_dir)[:-keep]:
        _discard_or_warn(old)
    kept = complete_checkpoints(checkpoint_dir)
    oldest_kept = step_of(kept[0].name) if kept else step
    for converted in universal_dirs(checkpoint_dir):  # derived from a step retention has now passed
        if universal_step(converted) < oldest_kept:
            _discard_or_warn(converted)
    for partial in step_dirs(checkpoint_dir):
        if not (partial / COMPLETE).exists() and step_of(partial.name) < step:
            _discard_or_warn(partial)


def _discard_or_warn(path: Path) -> None:
    held = _discard(path)
    if held is not None:
        _log.warning(f"warning: could not delete {path}: {held}. It stays whole; the next save tries again")


def moved_aside(checkpoint_dir: Path) -> list[tuple[Path, Path]]:
    """(step_N.tmp-replaced, step_N) for each complete step a killed second save left moved aside and
    whose name nothing holds: what `restore_moved_aside` puts back. Reads only the folder listing."""
    found = []
    for aside in sorted(checkpoint_dir.iterdir()) if checkpoint_dir.is_dir() else []:
        if not aside.name.endswith(REPLACED_SUFFIX):
            continue
        final = aside.with_name(aside.name[: -len(REPLACED_SUFFIX)])
        if (
            is_step_name(final.name)
            and not aside.is_symlink()
            and not final.exists()
            and not final.is_symlink()
            and (aside / COMPLETE).is_file()
        ):
            found.append((aside, final))
    return found


def restore_moved_aside(checkpoint_dir: Path) -> list[str]:
    """Rank 0 (or one process): put each complete step_N.tmp-replaced back under its step_N name when
    nothing holds that name. `_finish_save` moves the old step_N aside just before renaming the new one
    into place; a kill between the two renames left the step under neither name: --resume auto then
    did not see it and the next save deleted it. Returns one line per folder put back."""
    restored = []
    for aside, final in moved_aside(checkpoint_dir):
        os.rename(aside, final)
        restored.append(
            f"put {final.name} back in place: a second save of step {step_of(final.name)} was interrupted "
            f"after moving it aside to {aside.name}"
        )
    if restored:
        fsync_dir(checkpoint_dir)
        point_latest(checkpoint_dir)
    return restored


def _seal_universal(converted: Path, source: Path) -> None:
    shutil.copy2(source / "config.yaml", converted / "config.yaml")
    (converted.parent / "latest_universal").unlink(missing_ok=True)  # the converter's pointer; not needed


def _place_universal(converted: Path, target: Path, source: Path, manifest: dict[str, Any]) -> None:
    manifest["converted_from"] = {"name": source.name, "complete_blake2b": marker_digest(source)}
    write_manifest(converted, manifest)
    if target.exists():  # an older or damaged conversion: replaced whole
        shutil.rmtree(target)
    os.rename(converted, target)
    fsync_dir(target.parent)


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
            problem = f"writing {target}: {_describe(err, target.parent)}"
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
    if rank == 0:
        try:
            problem = _before_save(engine, checkpoint_dir, step)
        except Exception as err:  # any error reaches every rank through _agree
            problem = f"cannot prepare {checkpoint_dir} for the checkpoint of step {step}: {type(err).__name__}: {err}"
    problem = _agree(problem)
    if problem is not None:
        raise CheckpointWriteError(f"checkpoint of step {step} not saved: {problem}")

    problem = None
    try:
        engine.save_checkpoint(str(checkpoint_dir), tag=tmp_tag, client_state=client_state, save_latest=False)
    except Exception as err:
        if not _is_write_failure(err):
            raise
        problem = f"writing {tmp}: {_describe(err, checkpoint_dir)}"
        # DeepSpeed's collectives all precede its writes; the others wait in its closing barrier.
        dist.barrier()
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
                problem = f"finishing {checkpoint_dir / tag}: {_describe(err, checkpoint_dir)}"
        problem = _agree(problem)
    if problem is not None:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # a .tmp-save name is never resumed from anyway
        raise CheckpointWriteError(f"checkpoint of step {step} not saved: {problem}")
    return checkpoint_dir / tag


def _refusal(file: Path) -> NgptConfigError | None:
    try:
        safe_load.check(file)
    except NgptConfigError as err:
        return err
    except Exception as err:  # a truncated or foreign file: torch raises many types
        return NgptConfigError(f"{file} could not be read ({type(err).__name__}: {err}); the checkpoint is damaged")
    return None


def check_files_on_all_ranks(path: Path, device: torch.device | str) -> None:
    """Unpickle every file of the checkpoint under ngpt_ds.safe_load's allow-list before DeepSpeed
    reads any. Each rank checks its share; one all-reduce agrees on the first refused file, and every
    rank raises the same error for it. DeepSpeed reads some files on one rank only (a rank's optimizer
    states, a ZeRO-3 shard): a refusal there alone would leave the other ranks waiting in a collective."""
    files = sorted(path.rglob("*.pt"))
    rank, world = dist.get_rank(), dist.get_world_size()
    first = next((i for i in range(rank, len(files), world) if _refusal(files[i]) is not None), len(files))
    agreed = torch.tensor([first], dtype=torch.int64, device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    if int(agreed.item()) < len(files):
        file = files[int(agreed.item())]
        raise _refusal(file) or NgptConfigError(f"{file} changed while the checkpoint was being checked")


STATE_DICT_MISMATCH = "Error(s) in loading state_dict"
"""How torch's Module.load_state_dict begins its error for missing, unexpected or mis-shaped weights."""


def load(engine: DeepSpeedEngine, path: Path) -> dict[str, Any]:
    """Load engine, optimizer and scheduler state; returns the client state saved with it.
    Loading never runs code: every file is checked first (all ranks agree), and DeepSpeed's own
    reads go through the same restricted unpickler (ngpt_ds.safe_load)."""
    check_files_on_all_ranks(path, engine.device)
    with safe_load.deepspeed_loads_are_safe():
        try:
            load_path, client_state = engine.load_checkpoint(
                str(path.parent), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=True
            )
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
