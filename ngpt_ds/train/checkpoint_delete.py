"""Deleting checkpoints and leftovers: retention, and the rename-first delete every removal goes through.

A delete is atomic: a checkpoint leaves its step_N name in one rename (to step_N.tmp-delete) before any
of its files is removed. A kill, or a file that cannot be removed (NFS's .nfsXXXX files of a process still
holding one, another user's files, an immutable file), leaves a folder no reader takes for a checkpoint; the
next save removes the rest, with one warning naming the file and the reason. A leftover that cannot be
removed fails a save only when it holds a name that save writes (its own step_N.tmp-save, step_N.tmp-replaced)
and cannot be renamed either.
"""

from __future__ import annotations

import datetime
import errno
import os
import shutil
import sys
from pathlib import Path

from ngpt_ds import log
from ngpt_ds.train.checkpoint_layout import (
    COMPLETE,
    DELETE_SUFFIX,
    NOT_THIS_RUN_INFIX,
    complete_checkpoints,
    step_dirs,
    step_of,
    universal_dirs,
    universal_name,
    universal_step,
)
from ngpt_ds.train.fs_errors import describe
from ngpt_ds.train.manifest import MalformedManifest, fsync_dir, marker_digest, read_manifest

_log = log.get(__name__)


def remove(path: Path) -> None:
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


def discard(path: Path) -> str | None:
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
            return describe(err, path.parent)
        return None
    doomed = path
    if not path.name.endswith(DELETE_SUFFIX):
        try:
            doomed = _deletion_name(path)
            os.rename(path, doomed)
        except OSError as err:
            return f"renaming it to be deleted failed: {describe(err, path.parent)}"
        try:
            fsync_dir(path.parent)  # the new name on disk before any file goes
        except OSError as err:
            _log.warning(
                f"warning: {path} was renamed to {doomed.name} to be deleted, but the folder could not be "
                f"synced ({describe(err, path.parent)}); the next save removes it"
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


_WRITTEN: set[Path] = set()
"""The step_N and step_N-universal folders this process placed: the only ones a save of the same name deletes."""


def mark_written(folder: Path) -> None:
    """Record that this process placed `folder` (ngpt_ds.train.checkpoint, once it is renamed into place)."""
    _WRITTEN.add(Path(os.path.abspath(folder)))


def written_here(folder: Path) -> bool:
    """Whether this process placed `folder` (a step_N or step_N-universal of checkpoints/)."""
    return Path(os.path.abspath(folder)) in _WRITTEN


def _kept_name(final: Path) -> Path:
    """<step_N>.not-this-run-<UTC time> (then .1, .2, ...): a name no listing, resume, retention or leftover
    removal takes for a checkpoint, so nothing ever deletes it."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for k in range(1000):
        kept = final.with_name(f"{final.name}{NOT_THIS_RUN_INFIX}{stamp}{f'.{k}' if k else ''}")
        if not kept.exists() and not kept.is_symlink():
            return kept
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(kept))


def _kept_warning(final: Path, kept: Path) -> str:
    return (
        f"warning: {final} was there before this run saved step {step_of(final.name)}, and this run did not write "
        f"it (a copy put there during the run?): it was moved to {kept} and kept; the run's own checkpoint took "
        f"the name {final.name}. Move {kept.name} elsewhere, or remove it yourself"
    )


def move_out_kept(final: Path) -> Path:
    """Rank 0, in a save of `final`'s step: rename a step_N this run did not write straight to `_kept_name`, in
    one rename, before the run's own checkpoint takes the name (then warn with `kept_warning`). Raises OSError
    when it cannot be renamed (nothing changed then).

    It had gone through step_N.tmp-replaced, the name under which a second save of the run's own step waits: a
    kill between that rename and the next left the copy there, and the next start-up put it back under step_N
    (restore_moved_aside, which cannot tell whose it is), where --resume auto took another run's checkpoint
    for this run's step N."""
    kept = _kept_name(final)
    os.rename(final, kept)
    return kept


def kept_warning(final: Path, kept: Path) -> None:
    """The warning of `move_out_kept`, once the run's own checkpoint holds the name `final`."""
    _log.warning(_kept_warning(final, kept))


def keep_aside(aside: Path, final: Path) -> None:
    """Rank 0: rename `aside` (a step_N.tmp-replaced that an older ngpt_ds left holding a folder this run did not
    write) to `_kept_name`, with a warning naming both; when that fails it stays under `aside`, with a warning
    (`_before_save` tries again, never deleting it)."""
    try:
        kept = _kept_name(final)
        os.rename(aside, kept)
    except OSError as err:
        _log.warning(
            f"warning: {aside} holds a folder this run did not write (moved out of {final.name}) and could not be "
            f"renamed to be kept: {describe(err, aside.parent)}. It is not deleted; move it elsewhere yourself"
        )
        return
    _log.warning(_kept_warning(final, kept))


_LINEAGE: dict[Path, set[Path]] = {}
"""Per checkpoints folder: the step_N folders its lineage held when this process started (`mark_lineage`)."""


def mark_lineage(checkpoint_dir: Path, folders: list[Path]) -> None:
    """Record the step_N folders of `checkpoint_dir` that are the run's lineage at its start (ngpt_ds.train.lineage,
    after moving every later step aside): with those this process saves, the only ones retention counts and
    deletes."""
    _LINEAGE[Path(os.path.abspath(checkpoint_dir))] = {Path(os.path.abspath(f)) for f in folders}


def of_the_run(folder: Path) -> bool:
    """Whether retention may count and delete step_N `folder`: this process wrote it, or the run's lineage held it
    when this process started. Every folder counts in a process that recorded no lineage (a tool, a test)."""
    lineage = _LINEAGE.get(Path(os.path.abspath(folder.parent)))
    return lineage is None or written_here(folder) or Path(os.path.abspath(folder)) in lineage


_CONFIG_SOURCE: dict[Path, tuple[str, str | None]] = {}
"""Per checkpoints folder: the config file the running process trains from and the sha256 of its bytes when the
process started (`mark_config_source`)."""


def mark_config_source(checkpoint_dir: Path, config_source: str, config_sha256: str | None = None) -> None:
    """Record the config file this process trains from: retention never deletes a step_N whose own config.yaml
    records another (`of_another_config`), so that --out pointed at another run's folder keeps that run's
    checkpoints across every restart."""
    _CONFIG_SOURCE[Path(os.path.abspath(checkpoint_dir))] = (config_source, config_sha256)


def of_another_config(folder: Path) -> bool:
    """Whether step_N `folder` was saved by a run of another config file than the running one: its config.yaml
    records another config_source (read capped: ngpt_ds.train.config_identity), or cannot be read. A folder
    without a recorded config_source (an older ngpt_ds), or a process that recorded none, counts as the run's."""
    running = _CONFIG_SOURCE.get(Path(os.path.abspath(folder.parent)))
    if running is None:
        return False
    from ngpt_ds.train.config_identity import read_config_record, same_config_file  # its summary imports checkpoint

    try:
        saved, saved_sha256 = read_config_record(folder / "config.yaml")
    except ValueError:  # unreadable or damaged: kept, as another run's may be
        return True
    return saved is not None and not same_config_file(Path(saved), Path(running[0]), saved_sha256, running[1])


_LEFT_ALONE: set[Path] = set()
"""The step_N folders `retention` leaves alone and already warned about in this process (one warning each)."""


def _origin_of(twin: Path) -> dict | None:
    """The converted_from entry of folder `twin`'s manifest (a step_N-universal ngpt_ds sealed), else None: a
    link, no manifest, a damaged or crafted one (read capped, manifest.read_marker; never raises)."""
    if twin.is_symlink() or not twin.is_dir():
        return None
    try:
        origin = (read_manifest(twin) or {}).get("converted_from")
    except (MalformedManifest, OSError):
        return None
    return origin if isinstance(origin, dict) else None


def converted_from(twin: Path, source: Path) -> bool:
    """Whether folder `twin` holds a conversion ngpt_ds sealed from exactly checkpoint `source`: its manifest's
    converted_from names `source` and the digest of its COMPLETE (ngpt_ds.train.checkpoint.finish_universal)."""
    origin, digest = _origin_of(twin), marker_digest(source)
    return origin is not None and digest is not None and origin == {"name": source.name, "complete_blake2b": digest}


def _converted_from_the_runs_origin(converted: Path) -> bool:
    """Whether `converted` is the conversion of the checkpoint the run's lineage grew from, as <out>/lineage.json
    records it (its name and the digest of its COMPLETE): a resume of another run's checkpoint at another world
    size converts it into this run's checkpoints/, where no step_N twin stands."""
    from ngpt_ds.train.lineage import read_origin  # lineage imports ngpt_ds.train.checkpoint, which imports this

    record, origin = read_origin(converted.parent.parent), _origin_of(converted)
    return (
        record is not None
        and origin is not None
        and record["complete_blake2b"] is not None
        and origin == {"name": Path(record["resumed_from"]).name, "complete_blake2b": record["complete_blake2b"]}
    )


def retention(checkpoint_dir: Path, step: int, keep: int) -> None:
    """Rank 0, once step `step` is in place: delete all but the `keep` newest complete checkpoints (step_N
    folders only: the current lineage), and the step_N-universal conversions this run made that it no longer needs.
    Each goes through `discard`: a delete that fails or is cut short leaves no step_N holding part of a
    checkpoint, and says why in a warning. A checkpoint that cannot even be renamed stays whole, and counts as
    kept.

    A step_N-universal is deleted only when it is a conversion ngpt_ds made (its manifest's converted_from) of a
    checkpoint this retention deletes (before that checkpoint, so a kill never leaves a conversion whose source
    is gone), or of the checkpoint the run's lineage grew from (<out>/lineage.json; a resume of another run's
    checkpoint at another world size) once that step is older than every kept checkpoint. Any other, of a step
    older than every kept checkpoint, is left alone with one warning: converted by hand (DeepSpeed's
    ds_to_universal: no manifest), converted from another checkpoint or copied in from another run, or a link.
    A conversion of this very checkpoint copied in counts as the run's: the same files. Retention had deleted
    every step_N-universal of a step older than every kept checkpoint, whoever made it.

    A step_N folder without a manifest is never deleted: a save of this ngpt_ds never leaves one (it writes under
    step_N.tmp-save and renames once COMPLETE is written), so it is a checkpoint being copied in by hand (`cp -a`
    and `rsync -a` keep the source's old times, so no age tells a copy in progress or stalled from a forgotten
    folder) or an interrupted save of an older ngpt_ds version. One warning per folder names it. Retention
    had deleted every such folder of a step older than the one saved: a checkpoint a user was copying in.

    Nor is a complete step_N the run's lineage did not hold when this process started and that it did not write
    (`of_the_run`): another run's checkpoint of an earlier step copied in during the run, which retention had
    counted among the oldest and deleted at the next save. One warning per folder names it.

    Nor is a checkpoint of a step above `step` deleted or counted: the run's lineage holds none (resuming from an
    older step moves them aside, ngpt_ds.train.lineage), so it was put there from elsewhere during the run. One
    warning per folder names it. Counted among the `keep` newest, such a folder (another run's step_100 copied in
    to resume from later) had made retention delete the checkpoint just saved."""
    own = [c for c in complete_checkpoints(checkpoint_dir) if step_of(c.name) <= step and of_the_run(c)]
    own = [c for c in own if c.name == f"step_{step:08d}" or not of_another_config(c)]
    for old in own[:-keep]:
        twin = old.with_name(universal_name(old.name))
        if converted_from(twin, old):
            discard_or_warn(twin)
        discard_or_warn(old)
    kept = [c for c in complete_checkpoints(checkpoint_dir) if step_of(c.name) <= step and of_the_run(c)]
    oldest_kept = step_of(kept[0].name) if kept else step
    for foreign in complete_checkpoints(checkpoint_dir):
        if foreign in _LEFT_ALONE or (step_of(foreign.name) <= step and of_the_run(foreign)):
            continue
        _LEFT_ALONE.add(foreign)
        if step_of(foreign.name) > step:
            _log.warning(
                f"warning: {foreign} is a checkpoint of a step above the one just saved ({step}): it is not of this "
                "run's lineage (put there during the run) and retention neither counts nor deletes it. Move it "
                "elsewhere, or remove it yourself"
            )
        else:
            _log.warning(
                f"warning: {foreign} was not in checkpoints/ when this run started, and this run did not write it (put "
                "there during the run): it is not of the run's lineage, and retention neither counts nor deletes it. "
                "Move it elsewhere, or remove it yourself"
            )
    for converted in universal_dirs(checkpoint_dir):  # of a step retention has now passed
        if universal_step(converted) >= oldest_kept:
            continue
        if _converted_from_the_runs_origin(converted):
            discard_or_warn(converted)
        elif converted not in _LEFT_ALONE:
            _LEFT_ALONE.add(converted)
            _log.warning(
                f"warning: {converted} is not a conversion this run made (its manifest names neither a checkpoint "
                "retention deleted nor the one the run grew from: converted by hand, or copied in), so retention "
                "leaves it alone. Remove it yourself once it is not needed"
            )
    for partial in step_dirs(checkpoint_dir):
        if not (partial / COMPLETE).exists() and partial not in _LEFT_ALONE:
            _LEFT_ALONE.add(partial)
            _log.warning(
                f"warning: {partial} has no COMPLETE manifest: it is not a checkpoint of this run (a copy in progress, "
                "or an interrupted save of an older ngpt_ds) and retention leaves it alone. Remove it yourself once "
                "you know it is neither"
            )


def discard_or_warn(path: Path) -> None:
    held = discard(path)
    if held is not None:
        _log.warning(f"warning: could not delete {path}: {held}. It stays whole; the next save tries again")
