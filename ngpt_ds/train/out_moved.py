"""Telling a run that its --out was moved (mv) or removed while it trained, and where it went.

A save writes by path. After `mv <out> elsewhere` in the middle of a save, DeepSpeed's save_checkpoint (its
makedirs) created <out>/checkpoints/step_N.tmp-save again at the old place and wrote the rest of the checkpoint there,
which the manifest then sealed as step_N, complete, without the files written before the move (the model states
went with the folder): a checkpoint that cannot be loaded, named intact. A move a moment later stopped the run with
'checkpoint of step N not saved: finishing ...: No such file or directory', naming neither the move nor the fix.

Every rank holds --out open from the moment the run locks it (ngpt_ds.train.run_lock.lock_run; `hold`); `gone`
compares the folder the path names with it, and Linux's /proc/self/fd says where the folder went. Held only from the
first save, a move before it could not be named: the save wrote its checkpoint into a folder DeepSpeed made again at the
old place, and a metrics write said 'No checkpoint was saved yet: running the same command again starts from step 0'
(ranks other than 0 had held it from their first save only). A writer that makes its folder (TensorBoard's
SummaryWriter) checks once after it is made (`missing`, `names_in`, `events_made`, `remove_made`).
`mv` to another filesystem copies the folder, then deletes it: the held folder is then deleted, and where the copy is
cannot be known (`removed_line`). The other writes that meet a move (metrics, TensorBoard, summary.json) name it
through `moved_from`.

DeepSpeed read here (CONTRIBUTING.md), checked against deepspeed 0.19.8: its recovery scripts are the source files of
the modules deepspeed.utils.zero_to_fp32 and zero_to_torch, which engine._copy_recovery_script copies into the
checkpoints folder at each ZeRO save (`_recovery_scripts_to`); a release without one of them leaves it to the next
save."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ngpt_ds.train.checkpoint_layout import CHECKPOINTS, RECOVERY_SCRIPTS, complete_checkpoints, step_of

_held: dict[str, int] = {}
"""--out (absolute) -> a descriptor open on the folder it named when the run locked it (or at the process's first
save there, for a save with no trainer around it)."""
_scripts: dict[str, set[str]] = {}
"""--out (absolute) -> DeepSpeed's recovery scripts in its checkpoints folder as `gone` last saw it in place."""
_newest: dict[str, str] = {}
"""--out (absolute) -> the newest complete checkpoint `gone` saw there while the path still named the held folder:
what a removed folder (deleted, or moved to another filesystem) had, once nothing of it can be listed."""


def hold(out_dir: Path, *, anew: bool = False) -> None:
    """Open `out_dir` (the run's folder, wherever it is moved later), once; `anew` (the run's lock, at its
    start): again, closing a descriptor held from before (a folder of the same path removed and made again since)."""
    key = str(out_dir.absolute())
    if anew and key in _held:
        with contextlib.suppress(OSError):
            os.close(_held.pop(key))
        _newest.pop(key, None)
    if key not in _held:
        with contextlib.suppress(OSError):  # not there: `gone` says so
            _held[key] = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
    if anew:
        _note_newest(key, out_dir)


def _where(fd: int, out_dir: Path) -> Path | None:
    """Where the folder open as `fd` (held for `out_dir`) is now; None once deleted, or where /proc cannot tell (or
    names `out_dir` itself: a folder removed on an NFS server keeps its path there)."""
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    if path.endswith(" (deleted)") or not os.path.isabs(path) or path == os.path.abspath(out_dir):
        return None
    return Path(path)


def _away(out_dir: Path, *, record: bool = False) -> int | None:
    """The descriptor `hold` opened for `out_dir`, when `out_dir` no longer names that folder (moved, removed); None
    while it does, or where none was held. `record`: while it does, note its newest complete checkpoint (`_newest`)."""
    key = str(out_dir.absolute())
    fd = _held.get(key)
    if fd is None:
        return None
    try:
        named: os.stat_result | None = os.stat(out_dir)
    except OSError:
        named = None
    try:
        mine = os.fstat(fd)
    except OSError:  # the folder unreachable through the descriptor (NFS's stale handle, once removed on a server)
        return fd
    if named is not None and (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino):
        if record:
            _note_newest(key, out_dir)
        return None
    return fd


def _note_newest(key: str, out_dir: Path) -> None:
    """What a move or removal takes along and the run can then no longer list: the newest complete checkpoint and
    DeepSpeed's recovery scripts in <out>/checkpoints."""
    with contextlib.suppress(OSError):
        newest = complete_checkpoints(out_dir / CHECKPOINTS)[-1:]
        if newest:
            _newest[key] = newest[0].name
    _scripts[key] = {script for script in RECOVERY_SCRIPTS if (out_dir / CHECKPOINTS / script).is_file()}


def gone(out_dir: Path) -> str | None:
    """None while `out_dir` names the folder `hold` opened, or where none was held (a save creates a missing --out, as
    one with no trainer around it does); else one line naming the move, where the folder went (when known), the newest
    complete checkpoint there and the fix."""
    fd = _away(out_dir, record=True)
    if fd is None:
        return None
    new = _where(fd, out_dir)
    if new is None:
        return removed_line(out_dir, _newest.get(str(out_dir.absolute())))
    return _line(out_dir, new)


def _line(out_dir: Path, new: Path) -> str:
    """A save's line for --out moved to `new` during it: the newest complete checkpoint there, and the fix."""
    try:
        newest = [c.name for c in complete_checkpoints(new / CHECKPOINTS)][-1:]
    except OSError:
        newest = []
    intact = f"the newest complete there is {newest[0]}" if newest else "no complete checkpoint is there"
    go_on = "to continue from its newest" if newest else "to go on there, from step 0"
    return (
        f"{out_dir} was moved to {new} while the run trained; its checkpoints went with it ({intact}; a "
        f"step_N.tmp-save there is this unfinished save: the next save removes it). Run the same command with "
        f"--out {new} {go_on}"
    )


def new_place(out_dir: Path) -> Path | None:
    """Where the folder `hold` opened for `out_dir` is now, when `out_dir` no longer names it and it was moved (not
    deleted); else None (not moved, deleted, never held, or where /proc cannot tell)."""
    fd = _away(out_dir)
    return None if fd is None else _where(fd, out_dir)


def moved_from(path: Path | str) -> Path | None:
    """The held --out that `path` lies in, when that --out no longer names the run's folder (moved or removed): a
    write there failed for that reason, and 'Check its filesystem and the disk' was the wrong fix; else None."""
    target = os.path.abspath(path)
    for key in list(_held):
        if (target == key or target.startswith(key.rstrip(os.sep) + os.sep)) and _away(Path(key)) is not None:
            return Path(key)
    return None


def left_line(out_dir: Path, newest: str | None, checkpoint_interval: int) -> str | None:
    """What a run that stops on a moved or removed --out leaves to continue from (ngpt_ds.train.divergence's
    checkpoints_left): the new place and the --out to rerun with, `newest` the newest complete checkpoint the run had
    there (None before its first save); None while `out_dir` names the held folder, or where none was held."""
    fd = _away(out_dir)
    if fd is None:
        return None
    new = _where(fd, out_dir)
    if new is None:
        return removed_line(out_dir, newest, checkpoint_interval)
    if newest is None:  # held from the run's lock: the line had said 'starts from step 0' at the old place
        return (
            f"{out_dir} was moved to {new} while the run trained, before its first checkpoint "
            f"(train.checkpoint_interval {checkpoint_interval}): run the same command with --out {new} to go on "
            "there, from step 0"
        )
    return (
        f"{out_dir} was moved to {new} while the run trained; its checkpoints, up to step "
        f"{step_of(newest)}, went with it: run the same command with --out {new} to continue from its newest"
    )


def removed_line(out_dir: Path, newest: str | None, checkpoint_interval: int | None = None) -> str:
    """--out removed while the run trained: deleted, or moved to another filesystem (mv copies it, then deletes it),
    which the run cannot tell apart, nor where a copy is. The line had said '... is gone (moved or deleted ...): run
    the same command with --out at the folder's new place', a place the run did not know, and named no checkpoint.
    `newest`: the newest complete checkpoint the run had in it (None: none)."""
    what = (
        f"{out_dir} was removed while the run trained: deleted, or moved to another filesystem (mv copies the folder "
        "there, then deletes it here), and where a copy is cannot be known from here"
    )
    if newest is None:
        interval = f" (train.checkpoint_interval {checkpoint_interval})" if checkpoint_interval is not None else ""
        return (
            f"{what}. No complete checkpoint was in it{interval}: the same command (with --out at a copy's place, if "
            "there is one) starts from step 0"
        )
    return (
        f"{what}. The newest complete checkpoint the run had in it was {newest}: if the folder was copied, run the "
        f"same command with --out at the copy's place to continue from it (a step_N.tmp-save in the copy is an "
        "unfinished save: the next save removes it)"
    )


def remove_recreated(out_dir: Path, tmp: Path) -> None:
    """After `gone`: what the save wrote at the old place, which DeepSpeed's makedirs created again (the unfinished
    save `tmp`, DeepSpeed's recovery scripts), and the folders, where nothing else is in them. DeepSpeed's recovery
    scripts go to the new place first (`_recovery_scripts_to`)."""
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    checkpoint_dir = out_dir / CHECKPOINTS
    new = new_place(out_dir)
    if new is not None:
        _recovery_scripts_to(new / CHECKPOINTS, checkpoint_dir, _scripts.get(str(out_dir.absolute()), set()))
    for script in RECOVERY_SCRIPTS:
        with contextlib.suppress(OSError):
            (checkpoint_dir / script).unlink()
    for folder in (checkpoint_dir, out_dir):  # rmdir: only an empty folder, never one with anything else in it
        with contextlib.suppress(OSError):
            folder.rmdir()


def _recovery_scripts_to(moved: Path, old: Path, there_before: set[str]) -> None:
    """DeepSpeed's recovery scripts (zero_to_fp32.py: a checkpoint's fp32 weights without ngpt_ds) in `moved`, the
    checkpoints folder at --out's new place, when the move in the middle of a save left them out: each save removes
    them before DeepSpeed writes them again (ngpt_ds.train.checkpoint), and DeepSpeed then wrote them at the old
    place, or not at all when its write failed, so the new place had none until the next save. Taken from the old
    place where DeepSpeed wrote them, else, where they were there as the save started, copied from DeepSpeed's
    `deepspeed.utils` (its documented zero_to_fp32 module, which it copies them from). Created new, never through a
    link planted at the name (`replace_file`); a script that cannot be written is left to the next save."""
    import importlib.util

    from ngpt_ds.files import replace_file

    for script in RECOVERY_SCRIPTS:
        target = moved / script
        if os.path.lexists(target):
            continue
        source: Path | None = old / script
        if not (old / script).is_file():
            spec = importlib.util.find_spec(f"deepspeed.utils.{Path(script).stem}") if script in there_before else None
            source = Path(spec.origin) if spec is not None and spec.origin else None
        if source is None:
            continue
        with contextlib.suppress(OSError), open(source, "rb") as data:
            # executable for its owner, as DeepSpeed makes them (engine._change_recovery_script_permissions)
            replace_file(target, data, mode=(os.fstat(data.fileno()).st_mode & 0o777) | 0o100)


def missing(path: Path) -> list[Path]:
    """`path` and its folders that do not exist, deepest first: what a makedirs of `path` creates (`remove_made`)."""
    absent = []
    for folder in (path, *path.parents):
        if os.path.lexists(folder):
            break
        absent.append(folder)
    return absent


EVENTS_PREFIX = "events.out.tfevents."
"""How TensorBoard's events files are named (its documented file format: events.out.tfevents.<time>.<host>...)."""


def names_in(folder: Path) -> set[str]:
    """The names in `folder` now (none where it cannot be listed: not made yet), taken just before a writer starts
    there, to tell the files it makes (`events_made`)."""
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


def events_made(folder: Path, before: set[str]) -> list[Path]:
    """The TensorBoard events files in `folder` that were not there `before` (`names_in`, just before the
    SummaryWriter started): the one its writer made on starting. Found by listing the folder: the writer's own name
    for it is private to TensorBoard (EventFileWriter._file_name), read here before, which a release may rename. A
    file of another name (another program's) is never one of them."""
    return sorted(folder / name for name in names_in(folder) - before if name.startswith(EVENTS_PREFIX))


def remove_made(files: list[Path], folders: list[Path]) -> None:
    """What a writer made at the old place of an --out moved or removed (`moved_from`) before it wrote: its `files`,
    then its `folders` (those `missing` named before it wrote, deepest first) where they are empty. TensorBoard's
    SummaryWriter (ngpt_ds.train.metrics) makes its folder with makedirs: after a move between the run's lock and it,
    <old --out>/tensorboard was made again and the run wrote its metrics there until its first save met the move, and
    they stayed (`remove_recreated` cleans a save's files). Nothing else goes: a file another program put there
    (another run's, in a folder made again at the same path) is never the run's to delete."""
    for file in files:
        with contextlib.suppress(OSError):
            file.unlink()
    for folder in folders:  # rmdir: only an empty folder, never one with anything else in it
        with contextlib.suppress(OSError):
            folder.rmdir()
