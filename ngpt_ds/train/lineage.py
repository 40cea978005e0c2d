"""Lineage: one line of checkpoints per run folder. Resuming from an older step (or from another run's
checkpoint) moves the checkpoints that are not ancestors of the run aside, with the logs that describe
them, so that retention, --resume auto and export see only the lineage being trained. Nothing is deleted.
The checkpoint a lineage grew from is recorded in <out>/lineage.json, so that the same command run again
(--resume PATH, requeued by Slurm) continues that lineage instead of starting it over (`same_command_resume`).
The folder layout is ngpt_ds.train.checkpoint's.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import stat
from pathlib import Path

from ngpt_ds.train import checkpoint, checkpoint_delete
from ngpt_ds.train.manifest import read_capped
from ngpt_ds.train.metrics import REPLACED_JSONL
from ngpt_ds.train.summary import SUMMARY_FILE, replace_file

LINEAGE_FILE = "lineage.json"
"""In the run folder: where its current lineage was resumed from (`record_origin`)."""
RESTART_OPTION = "--restart-lineage"
"""The trainer's option that starts over from --resume PATH although PATH already started this run."""
_RECORD_MAX_BYTES = 65536
COPY_STAGING_PREFIX = ".copying-"
"""In checkpoints/: `.copying-abandoned-<time>`, where a rollback copies the earlier lineage's logs before the
folder is renamed to abandoned-<time>; one a kill left is removed at the next startup (`_remove_killed_copies`)."""


def in_run_folder(out_dir: Path, path: Path) -> bool:
    """Whether checkpoint folder `path` is one of `out_dir`'s own step folders. Only the folder holding the
    entry is resolved: a step folder that is itself a symbolic link (`ln -s /shared/run/checkpoints/step_4
    runP/checkpoints/`) is an entry of this run's checkpoints/, to resume like any other; resolving `path`
    itself followed the link and took it for another run's checkpoint, moved aside before it was loaded."""
    return Path(os.path.abspath(path)).parent.resolve() == (out_dir / checkpoint.CHECKPOINTS).resolve()


def start_lineage(out_dir: Path, resume_from: Path | None, *, named: bool = False) -> str | None:
    """`_start_lineage`; then the step folders left in checkpoints/ (the lineage: steps at most the one resumed)
    are recorded in this process as the run's (checkpoint_delete.mark_lineage), the only ones besides those it
    saves that retention counts and deletes."""
    moved = _start_lineage(out_dir, resume_from, named=named)
    checkpoint_dir = out_dir / checkpoint.CHECKPOINTS
    checkpoint_delete.mark_lineage(checkpoint_dir, checkpoint.step_dirs(checkpoint_dir))
    return moved


def _start_lineage(out_dir: Path, resume_from: Path | None, *, named: bool = False) -> str | None:
    """Rank 0, under the run lock, before anything is saved: one lineage per run folder.

    Resuming from step k moves every step_N folder with N > k (complete or not) into
    checkpoints/abandoned-<UTC time>/, so that retention, --resume auto and export see only the
    lineage being trained. Resuming from a checkpoint outside this folder's checkpoints (another run,
    an abandoned lineage) moves every step_N folder: none of them is an ancestor of the run, and
    retention would delete the older ones. The earlier lineage's metrics.jsonl and tensorboard/ go
    with them (`_keep_lineage_logs`). Nothing is deleted. A new lineage (started fresh, from another run's
    checkpoint, or from an older step) records its origin in <out>/lineage.json (`record_origin`). `named`:
    --resume PATH named `resume_from` (not --resume auto, which resumes the newest step too); the run's own
    newest step so named is recorded as a continuation point (`record_continuation`). Returns the line to
    print, or None when nothing moved.
    """
    checkpoint_dir = out_dir / checkpoint.CHECKPOINTS
    _remove_killed_copies(checkpoint_dir)
    k = checkpoint.step_of(resume_from.name) if resume_from is not None else 0
    elsewhere = resume_from is not None and not in_run_folder(out_dir, resume_from)
    newer = [d for d in checkpoint.step_dirs(checkpoint_dir) if elsewhere or checkpoint.step_of(d.name) > k]
    newer += [d for d in checkpoint.universal_dirs(checkpoint_dir) if elsewhere or checkpoint.universal_step(d) > k]
    # From elsewhere, the folder's logs are never the new lineage's, checkpoints of theirs or not: a run killed
    # before its first save, or whose checkpoints/ was deleted to start over, left metrics.jsonl rows and
    # TensorBoard events of its steps <= k, which the resumed run kept and appended its own to.
    # Not when <out>/lineage.json says the same checkpoint started them (the same command run again after a
    # session stopped before its first save): those are this lineage's, and metrics drops its rows after k.
    summary_file = out_dir / SUMMARY_FILE
    stray_logs = (
        elsewhere
        and not newer
        and (
            any(_run_log(out_dir / name) for name in _LOG_NAMES)
            or (summary_file.is_file() and not summary_file.is_symlink())
        )
        and not _grew_from(out_dir, resume_from)
    )
    if not newer and not stray_logs:
        if resume_from is None or elsewhere:  # a fresh lineage, or one growing from another run's checkpoint
            record_origin(out_dir, resume_from)
        elif named:  # the run's own newest step, named by --resume PATH (not auto)
            record_continuation(out_dir, resume_from)  # the same command run again continues, not rolls back to it
        return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    abandoned = checkpoint_dir / f"{checkpoint.ABANDONED_PREFIX}{stamp}"
    n = 1
    while abandoned.exists():
        n += 1
        abandoned = checkpoint_dir / f"{checkpoint.ABANDONED_PREFIX}{stamp}-{n}"
    # The logs' copy first, the one step that needs space: a disk too full for it had stopped the startup with the
    # checkpoints already moved and the origin recorded, so the same command run again took them as this lineage's
    # and never copied the logs nor moved summary.json (an empty metrics.jsonl in abandoned-*, the earlier
    # lineage's summary overwritten). A failed copy now leaves the run folder as it was. The copy is made in a
    # staging folder renamed into place once whole: made in abandoned-* itself, a SIGKILL during it left an
    # abandoned lineage of logs cut short and no checkpoint, which the rerun never removed (it made another).
    if elsewhere:  # the logs are moved, each in one rename: nothing to stage, and kept where they went
        abandoned.mkdir(parents=True)  # checkpoints/ too, when the folder holds only another run's logs
        logs = " and ".join(_keep_lineage_logs(out_dir, abandoned, move=True))
    else:
        staging = checkpoint_dir / f"{COPY_STAGING_PREFIX}{abandoned.name}"
        staging.mkdir()
        try:
            logs = " and ".join(_keep_lineage_logs(out_dir, staging, move=False))
            # On disk before the name: the run truncates its own metrics.jsonl to step k next, and a crash of the
            # machine after an unsynced rename could leave abandoned-* holding empty or short copies
            _sync_tree(staging)
            os.rename(staging, abandoned)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # only copies in it
            raise
    # The files naming the earlier lineage before its checkpoints: moved after them, a kill in between left
    # summary.json (and lineage.json) in --out with no newer checkpoint to move, so the same command run again moved
    # nothing, and the resumed run's summary replaced the earlier lineage's. Moved first, a kill before the
    # checkpoints follow leaves them to the rerun, which moves them into an abandoned-* of its own.
    record = out_dir / LINEAGE_FILE
    if record.is_file() and not record.is_symlink():  # the earlier lineage's origin goes with it
        os.rename(record, abandoned / LINEAGE_FILE)
    summary = _move_summary(out_dir, abandoned)
    checkpoint.fsync_dir(abandoned)
    checkpoint.fsync_dir(out_dir)
    for folder in newer:
        os.rename(folder, abandoned / folder.name)
    checkpoint.fsync_dir(abandoned)
    checkpoint.fsync_dir(checkpoint_dir)
    checkpoint.point_latest(checkpoint_dir)
    record_origin(out_dir, resume_from)
    names = ", ".join(d.name for d in newer)
    if elsewhere:
        logs = " and ".join(filter(None, (logs, summary)))
        if not newer:
            return (
                f"resuming from {resume_from}, outside {checkpoint_dir}: moved the {logs} of another run, which "
                f"left no checkpoint in {out_dir}, to {abandoned} (kept, not deleted)"
            )
        return (
            f"resuming from {resume_from}, outside {checkpoint_dir}: moved its {len(newer)} checkpoint folder(s) "
            f"of another lineage ({names}){f', and its {logs},' if logs else ''} to {abandoned} (kept, not deleted)"
        )
    return (
        f"resuming from step {k}: moved the {len(newer)} newer checkpoint folder(s) of the earlier lineage "
        f"({names}){f' and its {summary}' if summary else ''} to {abandoned} (kept, not deleted)"
        f"{f', with a copy of its {logs}' if logs else ''}"
    )


def _remove_killed_copies(checkpoint_dir: Path) -> None:
    """Remove the staging folders of log copies a killed startup left (`COPY_STAGING_PREFIX`): they hold only
    copies, cut short, of logs still in the run folder (rank 0 holds the run lock: no copy is under way)."""
    if not checkpoint_dir.is_dir():
        return
    for staging in checkpoint_dir.iterdir():
        ours = staging.name.startswith(COPY_STAGING_PREFIX + checkpoint.ABANDONED_PREFIX)  # not a user's .copying-*
        if ours and not staging.is_symlink() and staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)


def _sync_tree(folder: Path) -> None:
    """fsync every regular file and folder under `folder` (links are not followed), the deepest first."""
    for root, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        checkpoint.fsync_dir(Path(root))


def _move_summary(out_dir: Path, abandoned: Path) -> str | None:
    """summary.json describes how the earlier lineage ended (its step, its checkpoint, now in `abandoned`):
    it goes with it. Left in place, it said 'finished' at a step no checkpoint of the run holds until the
    resumed run wrote its own, and for good if that run was killed first. Returns its name, or None."""
    source = out_dir / SUMMARY_FILE
    if not source.is_file() or source.is_symlink():
        return None
    os.rename(source, abandoned / SUMMARY_FILE)
    return SUMMARY_FILE


def _keep_lineage_logs(out_dir: Path, abandoned: Path, *, move: bool) -> list[str]:
    """Keep the abandoned lineage's metrics.jsonl and TensorBoard logs beside its checkpoints: the run
    drops their records after the step it resumes from (ngpt_ds.train.metrics), and those are the
    steps an operator rolling back from a divergence wants to look at. `move`: none of the run
    folder's logs belong to the new lineage (a checkpoint from elsewhere), so they go whole; else a
    copy, and the run keeps its records up to the resumed step. Returns the names kept."""
    kept = []
    for name in _LOG_NAMES:
        source = out_dir / name
        if not _run_log(source):
            continue
        if move:
            os.rename(source, abandoned / name)
        elif source.is_dir():
            shutil.copytree(source, abandoned / name, symlinks=True, ignore=_not_copied)
        else:
            shutil.copy2(source, abandoned / name)
        kept.append(name + ("/" if (abandoned / name).is_dir() else ""))
    return kept


def _grew_from(out_dir: Path, resume_from: Path | None) -> bool:
    """Whether <out>/lineage.json records `resume_from` (its manifest digest) as the origin of the folder's lineage."""
    record = read_origin(out_dir)
    if record is None or resume_from is None:
        return False
    digest = checkpoint.marker_digest(resume_from)
    return digest is not None and digest == record["complete_blake2b"]


_LOG_NAMES = ("metrics.jsonl", REPLACED_JSONL, "tensorboard")
"""The run folder's logs of its lineage's steps (ngpt_ds.train.metrics). The rows a resume dropped go with them:
left behind, a new lineage from elsewhere appended its own dropped rows to an earlier lineage's."""


def _run_log(source: Path) -> bool:
    """Whether `source` is a log the run wrote: a file or folder, not a link (absent, or no file of the run's)."""
    return not source.is_symlink() and (source.is_dir() or source.is_file())


def _not_copied(folder: str, names: list[str]) -> list[str]:
    """What the copy of tensorboard/ leaves out: anything but folders, regular files and links (copied as
    links, never followed). Followed, a link to /dev/zero in a run folder someone handed over filled the disk
    at the rollback, and one to a file outside the folder copied it into the run; a named pipe blocked it."""
    left_out = []
    for name in names:
        mode = os.lstat(os.path.join(folder, name)).st_mode
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            left_out.append(name)
    return left_out


def record_origin(out_dir: Path, resume_from: Path | None) -> None:
    """Rank 0, under the run lock, when a lineage starts: write <out>/lineage.json naming the checkpoint it
    grows from (its absolute path, step and manifest digest, which identifies it even if moved), or remove
    the record for a fresh lineage (no checkpoint: an earlier record would describe checkpoints gone)."""
    path = out_dir / LINEAGE_FILE
    if resume_from is None:
        if path.is_file() or path.is_symlink():
            path.unlink()
        return
    replace_file(path, json.dumps(_entry(resume_from), indent=1) + "\n")


def _entry(resume_from: Path) -> dict:
    """A checkpoint as lineage.json names it: its absolute path, step and manifest digest."""
    return {
        "resumed_from": os.path.abspath(resume_from),
        "step": checkpoint.step_of(resume_from.name),
        "complete_blake2b": checkpoint.marker_digest(resume_from),
    }


CONTINUED_KEY = "continued_from"
"""In lineage.json: the run's own newest checkpoints that a later --resume PATH named (each as `_entry`), so
that the same command run again continues the lineage too (`same_command_resume`)."""
_CONTINUED_MAX = 32
"""The most recent continuation points kept (about 150 bytes each, far below the record's read cap)."""


def record_continuation(out_dir: Path, resume_from: Path) -> None:
    """Rank 0, under the run lock: --resume PATH named the newest checkpoint of the run's own lineage, so
    nothing moved and the lineage goes on. Record PATH in <out>/lineage.json (also as the origin when there is
    no record: a lineage started fresh), so that the same command run again (a Slurm requeue, a --max-time
    session's next) continues from the newest checkpoint; it rolled back to PATH and moved everything trained
    since into abandoned-*."""
    entry = _entry(resume_from)
    record = read_origin(out_dir)
    if record is None:  # a fresh lineage: its own step stands in for the origin, and is a continuation point
        replace_file(out_dir / LINEAGE_FILE, json.dumps({**entry, CONTINUED_KEY: [entry]}, indent=1) + "\n")
        return
    points = _points(record)
    if entry in points[1:]:
        return
    record[CONTINUED_KEY] = [*points[1:], entry][-_CONTINUED_MAX:]
    replace_file(out_dir / LINEAGE_FILE, json.dumps(record, indent=1) + "\n")


def _is_entry(value: object) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("resumed_from"), str)
        and isinstance(value.get("step"), int)
        and isinstance(value.get("complete_blake2b"), (str, type(None)))
    )


def _points(record: dict) -> list[dict]:
    """The checkpoints whose --resume continues the lineage: its origin, then each continuation point."""
    origin = {key: record[key] for key in ("resumed_from", "step", "complete_blake2b")}
    continued = record.get(CONTINUED_KEY)
    return [origin, *(e for e in continued if _is_entry(e))] if isinstance(continued, list) else [origin]


def read_origin(out_dir: Path) -> dict | None:
    """<out>/lineage.json, or None when it is absent, unreadable or not a record `record_origin` wrote."""
    path = out_dir / LINEAGE_FILE
    try:  # not a named pipe, whose read would block, nor a link to /dev/zero (manifest.read_capped)
        record = json.loads(read_capped(path, _RECORD_MAX_BYTES))
    except (OSError, ValueError, RecursionError):  # RefusedFile is a ValueError
        return None
    return record if _is_entry(record) else None


def same_command_resume(out_dir: Path, resume: str, named: Path | None, *, restart: bool) -> tuple[str, str | None]:
    """--resume PATH run again: (the --resume to use, the line to print or None).

    `named`: the checkpoint PATH names (None when PATH cannot be followed, as when retention deleted the
    step the lineage grew from). When PATH started this run's current lineage (the same manifest digest as
    <out>/lineage.json records; or, PATH gone, the same path) and --out holds complete checkpoints of that
    lineage, newer than PATH, the run continues from the newest ("auto"): running the same command again,
    as the trainer's stop message, its summary and the Slurm scripts' requeue do, trains on, where it
    restarted from PATH and moved everything the earlier sessions trained aside. `restart`
    (--restart-lineage) starts over from PATH. --resume auto and none, and a PATH that did not start the
    current lineage, are unchanged.
    """
    if resume in ("auto", "none") or restart:
        return resume, None
    record = read_origin(out_dir)
    if record is None:
        return resume, None
    digest = checkpoint.marker_digest(named) if named is not None else None
    points = _points(record)  # the origin, then the run's own steps a later --resume named
    if named is not None:  # the same manifest digest: the same checkpoint, wherever it lies now
        matches = [i for i, p in enumerate(points) if digest is not None and digest == p["complete_blake2b"]]
    else:  # gone (retention deletes the step a lineage grew from): the same path
        matches = [i for i, p in enumerate(points) if os.path.abspath(resume) == p["resumed_from"]]
    if not matches:
        return resume, None
    point = points[matches[-1]]  # the latest time PATH was named
    newer = [
        p
        for p in checkpoint.complete_checkpoints(out_dir / checkpoint.CHECKPOINTS)
        if checkpoint.step_of(p.name) > point["step"]
    ]
    if not newer:  # nothing saved since: the earlier session stopped before its first checkpoint
        return resume, None
    if matches[-1] > 0:
        return "auto", (
            f"--resume {resume} already resumed this run at step {point['step']} ({out_dir / LINEAGE_FILE}); "
            f"continuing from its newest checkpoint, {newer[-1].name}. Pass --resume {resume} {RESTART_OPTION} "
            "to go back to it"
        )
    return "auto", (
        f"--resume {resume} already started this run ({out_dir / LINEAGE_FILE}); continuing from its newest "
        f"checkpoint, {newer[-1].name}. Pass --resume {resume} {RESTART_OPTION} to start over from it"
    )
