"""What a kill during the last renames of a save leaves in checkpoints/, mended at the next start-up (rank 0, in
a folder no trainer holds, before anything lists the checkpoints: ngpt_ds.train.resume._restore_moved_aside).

A save seals step_N.tmp-save (its COMPLETE manifest written last), then, in a second save of a step the process
itself wrote, moves the old step_N to step_N.tmp-replaced, then renames the new folder to step_N
(ngpt_ds.train.checkpoint._finish_save). The new manifest records the COMPLETE digest of the folder it replaces
(`replaces`), so a restarted process can tell the run's own replaced step from a copy. Two faults:

- A kill after the seal and before the rename left a finished save as step_N.tmp-save; the next start-up put
  back the older step_N (if any) and the next save deleted the finished one. Now a sealed step_N.tmp-save that
  is provably the run's finished save of step N is renamed into place: its manifest names step N and every file
  matches it; no step_N or newer step folder stands (or the step_N standing is the one its manifest says it
  replaces); and nothing changed the lineage after it was sealed (no abandoned-* folder, lineage.json or
  checkpoint of the folder was written later). Any other sealed one is kept as step_N.interrupted-save-<UTC time>
  with a warning saying why, never deleted.
  "Later" is told without the wall clock: the manifest records what checkpoints/ held when the save was sealed
  (`seal_record`: each step folder's COMPLETE digest, the abandoned-* names, lineage.json's digest), and anything
  not there then was written after. File times had been compared: a clock stepped back (NTP, a VM resumed) made a
  later abandoned-* folder or lineage.json look older than the seal, and a save of an abandoned lineage was put in
  place; or made an earlier one look newer, and the finished save was kept aside. A save sealed by an older
  ngpt_ds records nothing: its folder is judged by file times still.
- A kill after the second rename left the run's replaced step as step_N.tmp-replaced beside the new step_N; the
  next save kept it as step_N.not-this-run-<time>, a full duplicate with a warning that the run had not written
  it. Now, when the new step_N's manifest says it replaced exactly that folder and step_N verifies, the old one
  is removed with a line saying what it was; otherwise it is left to the save's usual handling (kept).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ngpt_ds.train import run_identity
from ngpt_ds.train.checkpoint_delete import discard
from ngpt_ds.train.checkpoint_layout import (
    ABANDONED_PREFIX,
    COMPLETE,
    REPLACED_SUFFIX,
    TEMP_SUFFIX,
    is_step_name,
    point_latest,
    step_dirs,
    step_of,
)
from ngpt_ds.train.fs_errors import describe
from ngpt_ds.train.manifest import (
    MAX_COMPLETE_BYTES,
    MalformedManifest,
    RefusedFile,
    fsync_dir,
    marked_step,
    marker_digest,
    read_capped,
    read_manifest,
    verify,
)

KEPT_INFIX = ".interrupted-save-"
"""step_N.interrupted-save-<UTC time>: a sealed step_N.tmp-save that could not be shown to be the run's finished
save; not a step_N nor a leftover name, so no listing, resume, retention or leftover removal takes it."""
LINEAGE_FILE = "lineage.json"  # ngpt_ds.train.lineage.LINEAGE_FILE; lineage imports checkpoint, which imports this


SEALED_AMONG = "sealed_among"
"""The manifest entry of a save (`seal_record`): what checkpoints/ held when it was sealed."""
_LINEAGE_MAX_BYTES = 1 << 20
_UNREADABLE = "unreadable"


def replaced_record(final: Path) -> dict[str, Any]:
    """The manifest entry of a save that replaces the run's own `final` (a second save of its step)."""
    return {"replaces": {"name": final.name, "complete_blake2b": marker_digest(final)}}


def seal_record(checkpoint_dir: Path, final: Path, *, own: bool) -> dict[str, Any]:
    """Rank 0, as a save of `final` is sealed: the manifest entries a restart reads (`_not_provable`). What the
    folder holds then, so that anything written after is told by its absence from this record, not by a file
    time; the id of the run saving it (`run_identity.recorded`); and `replaced_record` when the save replaces the
    run's own `final`."""
    record: dict[str, Any] = {
        SEALED_AMONG: _folder_state(checkpoint_dir),
        **run_identity.recorded(checkpoint_dir.parent),
    }
    if own:
        record.update(replaced_record(final))
    return record


def _folder_state(checkpoint_dir: Path) -> dict[str, Any]:
    # One listing, no stat of a folder (DirEntry.is_dir follows a link to a folder as step_dirs does) and one
    # stat of each COMPLETE (`_complete_digest`): a keep-all run with 2000 checkpoints read every COMPLETE at
    # each save: 120 ms of CPU on the 2-core test machine, now 12 (a stat each).
    with os.scandir(checkpoint_dir) as entries:
        listed = [(e.name, e.is_dir()) for e in entries]
    steps = sorted((name for name, is_dir in listed if is_step_name(name) and is_dir), key=step_of)
    known = _DIGESTS.setdefault(str(checkpoint_dir), {})
    digests = {name: _complete_digest(checkpoint_dir, name, known) for name in steps}
    for gone in set(known) - set(digests):
        del known[gone]  # a folder deleted (retention) or renamed: its entry would only take memory
    return {
        "steps": digests,
        "abandoned": sorted(name for name, _ in listed if name.startswith(ABANDONED_PREFIX)),
        "lineage_blake2b": _file_digest(checkpoint_dir.parent / LINEAGE_FILE, _LINEAGE_MAX_BYTES),
    }


_DIGESTS: dict[str, dict[str, tuple[tuple[int, ...], str]]] = {}
"""checkpoints/ -> step folder name -> (its COMPLETE's stat key, digest), kept across one process's saves."""
_SETTLED_NS = 2 * 10**9


def _complete_digest(checkpoint_dir: Path, name: str, known: dict[str, tuple[tuple[int, ...], str]]) -> str | None:
    """`_file_digest` of step folder `name`'s COMPLETE, read again only when its stat key (device, inode, size, mtime,
    ctime) changed since this process last read it. Any write, chmod, rename over it or copy in its place changes
    the ctime, which no user can set. A file changed less than 2 s before it was read is not remembered (a second
    write within one tick of a coarse file clock could keep the key: git's "racy clean" case). A stale entry could
    only make a restart keep a finished save aside, never put one in place: its digest differs from the file."""
    path = os.path.join(checkpoint_dir, name, COMPLETE)
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        known.pop(name, None)
        return _file_digest(Path(path), MAX_COMPLETE_BYTES)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    entry = known.get(name)
    if entry is not None and entry[0] == key:
        return entry[1]
    digest = _file_digest(Path(path), MAX_COMPLETE_BYTES)
    if digest not in (None, _UNREADABLE) and max(st.st_mtime_ns, st.st_ctime_ns) < time.time_ns() - _SETTLED_NS:
        known[name] = (key, digest)
    else:
        known.pop(name, None)
    return digest


def _file_digest(path: Path, cap: int) -> str | None:
    """blake2b-128 of the file's bytes (the COMPLETE itself, not `marker_digest`, which reads megabytes of a
    legacy checkpoint's files); None when there is none; "unreadable" when it cannot be read."""
    if not (path.exists() or path.is_symlink()):
        return None
    try:
        return hashlib.blake2b(read_capped(path, cap), digest_size=16).hexdigest()
    except (OSError, RefusedFile):
        return _UNREADABLE


def _read_error(path: Path) -> str:
    """Why `path` cannot be read, in words (`_file_digest` keeps only that it cannot)."""
    try:
        read_capped(path, MAX_COMPLETE_BYTES)
    except RefusedFile as err:
        return err.what
    except OSError as err:
        return err.strerror or str(err)
    return "it reads now; it did not a moment before"


def _recorded_state(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's `seal_record` entry when well formed, else None."""
    state = manifest.get(SEALED_AMONG)
    if not isinstance(state, dict):
        return None
    steps, abandoned, lineage = state.get("steps"), state.get("abandoned"), state.get("lineage_blake2b")
    if not (isinstance(steps, dict) and all(isinstance(v, (str, type(None))) for v in steps.values())):
        return None
    if not (isinstance(abandoned, list) and all(isinstance(n, str) for n in abandoned)):
        return None
    return state if isinstance(lineage, (str, type(None))) else None


def _replaces(folder: Path, old: Path, name: str) -> bool:
    """Whether `folder`'s manifest records that its save replaced exactly the folder now at `old` (once step `name`)."""
    try:
        record = (read_manifest(folder) or {}).get("replaces")
    except (MalformedManifest, OSError):
        return False
    digest = marker_digest(old)
    return digest is not None and record == {"name": name, "complete_blake2b": digest}


def sealed_beside_others(folder: Path) -> list[str]:
    """The step folders beside checkpoint `folder` that its manifest's seal record lists with other COMPLETE bytes
    than they hold now: `folder` was sealed beside another run's checkpoints (one copied in from a colleague's
    --out). Empty when the record names none of the folders here, or records nothing (an older ngpt_ds)."""
    try:
        state = _recorded_state(read_manifest(folder) or {})
    except (MalformedManifest, OSError):
        return []
    if state is None:
        return []
    differ = []
    for name, recorded in sorted(state["steps"].items(), key=lambda item: str(item[0])):
        if recorded in (None, _UNREADABLE) or not is_step_name(name) or name == folder.name:
            continue  # a name only: never a path (a crafted record's '../x'), read under checkpoints/ alone
        now = _file_digest(folder.parent / name / COMPLETE, MAX_COMPLETE_BYTES)
        if now not in (None, _UNREADABLE) and now != recorded:
            differ.append(name)
    return differ


def why_latest_was_behind(checkpoint_dir: Path, named: str, newest: Path) -> str:
    """Why `latest` named `named` where `newest` is the newest complete checkpoint of `checkpoint_dir`, as far as
    newest's seal record tells: a save killed between its rename into place and the update of `latest` sealed
    newest beside the step `latest` named, as that step is now. The message blamed such a kill alone, also for a
    step folder copied in by hand or a `latest` naming a folder deleted since."""
    before = checkpoint_dir / named
    if not is_step_name(named) or not (before / COMPLETE).is_file():
        return "no complete checkpoint has that name here (moved or deleted by hand, or never one)"
    try:
        state = _recorded_state(read_manifest(newest) or {})
    except (MalformedManifest, OSError):
        state = None
    if state is None:  # an older ngpt_ds, or no readable record: either cause
        return f"a save was killed before updating it, or {newest.name} was copied in by hand"
    recorded = state["steps"].get(named)
    if recorded not in (None, _UNREADABLE) and recorded == _file_digest(before / COMPLETE, MAX_COMPLETE_BYTES):
        return "a save was killed before updating it"
    return f"{newest.name}, newer, was not saved after it in this folder (copied or moved in by hand)"


def _mtime(path: Path) -> int:
    try:
        return os.lstat(path).st_mtime_ns
    except OSError:
        return -1


Verify = Callable[[Path], str | None]
"""A folder -> None when every file matches its manifest, else why not (manifest.verify, or a verdict the ranks
reached together: ngpt_ds.train.resume._restore_moved_aside)."""


def _not_provable(tmp: Path, final: Path, checkpoint_dir: Path, verify: Verify = verify) -> str | None:
    """None when sealed `tmp` is provably the run's finished save of `final`'s step; else why not. Every file is
    read last (`verify`), after the checks that read COMPLETE and the listing only."""
    step = step_of(final.name)
    try:
        manifest = read_manifest(tmp)
        if manifest is None:
            return f"its {COMPLETE} is not a manifest"
        marked = marked_step(tmp)
    except (MalformedManifest, OSError) as err:
        return f"its {COMPLETE} cannot be read ({err})"
    if marked != step:
        return f"its manifest names step {marked}, not {step}"
    if SEALED_AMONG in manifest:
        state = _recorded_state(manifest)
        if state is None:
            return f"its manifest's {SEALED_AMONG} record is malformed"
        steps, lineage = state["steps"], _file_digest(checkpoint_dir.parent / LINEAGE_FILE, _LINEAGE_MAX_BYTES)

        def sealed_after(other: Path) -> bool:
            return other.name not in steps or steps[other.name] != _file_digest(other / COMPLETE, MAX_COMPLETE_BYTES)

        def unreadable(other: Path) -> str | None:
            """Why `other`'s COMPLETE cannot tell whether it changed after the seal, or None."""
            if _file_digest(other / COMPLETE, MAX_COMPLETE_BYTES) == _UNREADABLE:
                return f"{other.name}/{COMPLETE} cannot be read now ({_read_error(other / COMPLETE)})"
            if steps.get(other.name) == _UNREADABLE:
                return f"{other.name}/{COMPLETE} could not be read when it was sealed"
            return None

        def written_after(abandoned: Path) -> bool:
            return abandoned.name not in state["abandoned"]

        lineage_changed = lineage != state["lineage_blake2b"] or lineage == _UNREADABLE
    else:  # sealed by an ngpt_ds that recorded nothing: file times, which follow the wall clock
        sealed = _mtime(tmp / COMPLETE)

        def sealed_after(other: Path) -> bool:
            return _mtime(other / COMPLETE) > sealed

        def written_after(abandoned: Path) -> bool:
            return _mtime(abandoned) > sealed

        lineage_changed = _mtime(checkpoint_dir.parent / LINEAGE_FILE) > sealed

        def unreadable(other: Path) -> str | None:
            return None

    for other in step_dirs(checkpoint_dir):
        if step_of(other.name) >= step and not (other == final and _replaces(tmp, final, final.name)):
            return f"{other.name} stands beside it"
        cannot = unreadable(other)
        if cannot is not None:
            # Not "sealed after it": nothing says so. A COMPLETE that fails to read (permissions, a storage fault)
            # hides whether that folder changed since the seal, so the save is kept aside all the same.
            return (
                f"{cannot}, so whether {other.name} changed after this save was sealed is unknown. Check that file's "
                f"permissions and its storage: --resume reads it too. To use this save, move it out of "
                f"{checkpoint_dir.name}/ as {final.name} and pass --resume with that path"
            )
        if sealed_after(other):
            return f"{other.name} was sealed after it"
    later = [p.name for p in checkpoint_dir.iterdir() if p.name.startswith(ABANDONED_PREFIX) and written_after(p)]
    if later or lineage_changed:
        return f"the run's lineage changed after it was sealed ({', '.join(later) or LINEAGE_FILE})"
    return verify(tmp)


def _keep(tmp: Path, final: Path, why: str) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kept = final.with_name(f"{final.name}{KEPT_INFIX}{stamp}")
    k = 0
    while kept.exists() or kept.is_symlink():
        k += 1
        kept = final.with_name(f"{final.name}{KEPT_INFIX}{stamp}.{k}")
    try:
        os.rename(tmp, kept)
    except OSError as err:
        return (
            f"{tmp.name} is a sealed save not put in place ({why}) and could not be renamed to be kept: "
            f"{describe(err, tmp.parent)}. The next save deletes it: move it elsewhere first"
        )
    return (
        f"{tmp.name}, a save sealed complete but interrupted before its rename, was not put in place ({why}): "
        f"kept as {kept.name}, not deleted. Move it elsewhere or remove it yourself"
    )


def _why_not(tmp: Path, final: Path, checkpoint_dir: Path, verify: Verify = verify) -> str | None:
    """None when sealed `tmp` is to be put in place as `final` (`_not_provable`, and nothing else holds the name)."""
    why = _not_provable(tmp, final, checkpoint_dir, verify)
    aside = final.with_name(final.name + REPLACED_SUFFIX)
    if why is None and (final.exists() or final.is_symlink()):
        if final.is_symlink() or aside.exists() or aside.is_symlink():
            why = f"{final.name} stands in its place"
    return why


def _sealed(checkpoint_dir: Path) -> list[tuple[Path, Path]]:
    """(step_N.tmp-save, step_N) for each sealed save folder (not a link; its COMPLETE a regular file). An unsealed
    one is a half-written save, which the next save removes."""
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for tmp in sorted(checkpoint_dir.iterdir()):
        base = tmp.name[: -len(TEMP_SUFFIX)]
        if tmp.name.endswith(TEMP_SUFFIX) and is_step_name(base) and not tmp.is_symlink() and tmp.is_dir():
            if (tmp / COMPLETE).is_file() and not (tmp / COMPLETE).is_symlink():
                found.append((tmp, tmp.with_name(base)))
    return found


def finished_saves(checkpoint_dir: Path, verify: Verify = verify) -> list[tuple[Path, Path]]:
    """Read-only (the dry run): (step_N.tmp-save, step_N) for each save `recover_interrupted_saves` puts in place."""
    found = _sealed(checkpoint_dir)
    return [(tmp, final) for tmp, final in found if _why_not(tmp, final, checkpoint_dir, verify) is None]


def _promote(checkpoint_dir: Path, tmp: Path, final: Path, verdicts: dict[str, str | None]) -> str:
    why = _why_not(tmp, final, checkpoint_dir, remembering(verdicts))
    if why is not None:
        return _keep(tmp, final, why)
    if final.exists():  # the save's first rename, which the kill came before: the run's own step N, which it replaces
        os.rename(final, final.with_name(final.name + REPLACED_SUFFIX))
    os.rename(tmp, final)
    verdicts[str(final)] = verdicts[str(tmp)]  # the same files, verified under the old name: not read again
    fsync_dir(checkpoint_dir)
    return (
        f"put {final.name} in place from {tmp.name}: its save was sealed complete (every file verified against "
        f"its {COMPLETE} manifest) when it was interrupted before the rename"
    )


def _replaced_by(aside: Path, final: Path) -> bool:
    """`aside` is the run's own step that the save now in place as `final` says it replaced."""
    return not final.is_symlink() and final.is_dir() and _replaces(final, aside, final.name)


def _drop_replaced(aside: Path, final: Path, verdicts: dict[str, str | None]) -> str | None:
    """A line when `aside` is the run's own step moved aside by the save now in place as `final`."""
    if not _replaced_by(aside, final):
        return None
    problem = remembering(verdicts)(final)
    if problem is not None:
        return (
            f"kept {aside.name}, the version of {final.name} that the run's last save of step {step_of(final.name)} "
            f"replaced: the new {final.name} fails its check ({problem})"
        )
    held = discard(aside)
    if held is not None:
        return f"could not remove {aside.name}, the replaced version of {final.name}: {held}"
    return (
        f"removed {aside.name}: the version of {final.name} that the run's second save of step "
        f"{step_of(final.name)} replaced (a kill came after the new one was in place, which is verified complete)"
    )


def remembering(verdicts: dict[str, str | None]) -> Verify:
    """`verify`, reading a folder's files only when `verdicts` holds no verdict for it yet (then kept there)."""

    def check(path: Path) -> str | None:
        if str(path) not in verdicts:
            verdicts[str(path)] = verify(path)
        return verdicts[str(path)]

    return check


def _asides(checkpoint_dir: Path) -> list[tuple[Path, Path]]:
    """(step_N.tmp-replaced, step_N) for each moved-aside folder (not a link)."""
    found = []
    for aside in sorted(checkpoint_dir.iterdir()):
        base = aside.name[: -len(REPLACED_SUFFIX)]
        if aside.name.endswith(REPLACED_SUFFIX) and is_step_name(base) and not aside.is_symlink() and aside.is_dir():
            found.append((aside, aside.with_name(base)))
    return found


def to_verify(checkpoint_dir: Path) -> list[Path]:
    """Read-only: the folders whose every file `recover_interrupted_saves` would read (each sealed save that passes
    every other check; each step_N that says it replaced the folder moved aside beside it), so that the ranks can
    verify them together first, each file read by one rank (ngpt_ds.train.resume._restore_moved_aside). Rank 0
    alone had read them all, the other ranks waiting: 2.7 s a GiB here, minutes for a checkpoint of a few
    billion parameters, before the resume read them all again."""
    if not checkpoint_dir.is_dir():
        return []
    found = [
        tmp for tmp, final in _sealed(checkpoint_dir) if _why_not(tmp, final, checkpoint_dir, lambda _: None) is None
    ]
    return found + [final for aside, final in _asides(checkpoint_dir) if _replaced_by(aside, final)]


def recover_interrupted_saves(checkpoint_dir: Path, verdicts: dict[str, str | None] | None = None) -> list[str]:
    """Rank 0 at start-up, in a folder no trainer holds: the two repairs of the module docstring, in that order.
    Returns one line per folder put in place, kept or removed (the caller prints them as warnings). `verdicts`:
    `verify`'s answer for folders already verified (by path, as `to_verify` names them); any other is verified
    here, by this process alone."""
    if not checkpoint_dir.is_dir():
        return []
    known = dict(verdicts or {})
    lines = [_promote(checkpoint_dir, tmp, final, known) for tmp, final in _sealed(checkpoint_dir)]
    for aside, final in _asides(checkpoint_dir):
        line = _drop_replaced(aside, final, known)
        lines += [line] if line else []
    if lines:
        point_latest(checkpoint_dir)
    return lines
