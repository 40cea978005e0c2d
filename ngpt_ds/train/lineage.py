"""Lineage: one line of checkpoints per run folder. Resuming from an older step (or from another run's
checkpoint) moves the checkpoints that are not ancestors of the run aside, with the logs that describe
them, so that retention, --resume auto and export see only the lineage being trained. Nothing is deleted.
The folder layout is ngpt_ds.train.checkpoint's.
"""

from __future__ import annotations

import datetime
import os
import shutil
from pathlib import Path

from ngpt_ds.train import checkpoint
from ngpt_ds.train.summary import SUMMARY_FILE


def start_lineage(out_dir: Path, resume_from: Path | None) -> str | None:
    """Rank 0, under the run lock, before anything is saved: one lineage per run folder.

    Resuming from step k moves every step_N folder with N > k (complete or not) into
    checkpoints/abandoned-<UTC time>/, so that retention, --resume auto and export see only the
    lineage being trained. Resuming from a checkpoint outside this folder's checkpoints (another run,
    an abandoned lineage) moves every step_N folder: none of them is an ancestor of the run, and
    retention would delete the older ones. The earlier lineage's metrics.jsonl and tensorboard/ go
    with them (`_keep_lineage_logs`). Nothing is deleted. Returns the line to print, or None when
    nothing moved.
    """
    checkpoint_dir = out_dir / checkpoint.CHECKPOINTS
    k = checkpoint.step_of(resume_from.name) if resume_from is not None else 0
    elsewhere = resume_from is not None and resume_from.resolve().parent != checkpoint_dir.resolve()
    newer = [d for d in checkpoint.step_dirs(checkpoint_dir) if elsewhere or checkpoint.step_of(d.name) > k]
    newer += [d for d in checkpoint.universal_dirs(checkpoint_dir) if elsewhere or checkpoint.universal_step(d) > k]
    if not newer:
        return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    abandoned = checkpoint_dir / f"{checkpoint.ABANDONED_PREFIX}{stamp}"
    n = 1
    while abandoned.exists():
        n += 1
        abandoned = checkpoint_dir / f"{checkpoint.ABANDONED_PREFIX}{stamp}-{n}"
    abandoned.mkdir()
    for folder in newer:
        os.rename(folder, abandoned / folder.name)
    checkpoint.fsync_dir(checkpoint_dir)
    checkpoint.point_latest(checkpoint_dir)
    names = ", ".join(d.name for d in newer)
    logs = " and ".join(_keep_lineage_logs(out_dir, abandoned, move=elsewhere))
    summary = _move_summary(out_dir, abandoned)
    if elsewhere:
        logs = " and ".join(filter(None, (logs, summary)))
        return (
            f"resuming from {resume_from}, outside {checkpoint_dir}: moved its {len(newer)} checkpoint folder(s) "
            f"of another lineage ({names}){f', and its {logs},' if logs else ''} to {abandoned} (kept, not deleted)"
        )
    return (
        f"resuming from step {k}: moved the {len(newer)} newer checkpoint folder(s) of the earlier lineage "
        f"({names}){f' and its {summary}' if summary else ''} to {abandoned} (kept, not deleted)"
        f"{f', with a copy of its {logs}' if logs else ''}"
    )


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
    for name in ("metrics.jsonl", "tensorboard"):
        source = out_dir / name
        if not source.exists() or source.is_symlink():
            continue
        if move:
            os.rename(source, abandoned / name)
        elif source.is_dir():
            shutil.copytree(source, abandoned / name)
        else:
            shutil.copy2(source, abandoned / name)
        kept.append(name + ("/" if (abandoned / name).is_dir() else ""))
    return kept
