"""summary.json: the run's last word, which launch/slurm/train.sbatch reads to decide whether to requeue."""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ngpt_ds import log
from ngpt_ds.errors import UNPARSABLE
from ngpt_ds.train import checkpoint, run_lock

SUMMARY_FILE = "summary.json"
_log = log.get(__name__)


@dataclass
class Summary:
    status: str
    """'finished', 'stopped' (signal, launcher gone or --max-time; checkpoint saved), 'stopped-unsaved'
    (an urgent stop came too late in train.stop_grace_s to save) or 'already-finished' (nothing to do)."""
    step: int
    max_steps: int
    tokens: int
    train_loss: float
    val_loss: float
    seconds: float
    checkpoint: str | None
    out_dir: str


def replace_file(path: Path, text: str) -> None:
    """Write `text` to a sibling file, then rename it over `path`: a kill mid-write leaves the old
    file whole (a resumed run's config.yaml; summary.json, which launch/slurm/train.sbatch reads to
    decide whether to requeue), never a file cut short."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:  # disk full: no empty or partial sibling left beside the run's files
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def mend_finished_summary(out_dir: Path, step: int, max_steps: int) -> None:
    """Rank 0 of a rerun with nothing left to train: summary.json must say the run finished at `step`.

    A kill after the last checkpoint was in place and before summary.json was written (retention deletes
    old checkpoints in between) left the summary of an earlier stop, or none, and the rerun wrote nothing:
    summary.json said 'stopped' at an old step for good. The losses and tokens come from metrics.jsonl's
    records of that step (NaN when absent); the seconds trained are not known. Not in a folder another
    trainer holds."""
    path = out_dir / SUMMARY_FILE
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, *UNPARSABLE):
        old = None
    if isinstance(old, dict) and old.get("status") == "finished" and old.get("step") == step:
        return
    records = _records_of_step(out_dir / "metrics.jsonl", step)
    summary = Summary(
        "finished",
        step,
        max_steps,
        int(records.get("train/tokens", 0)),
        float(records.get("train/loss", math.nan)),
        float(records.get("eval/loss", math.nan)),
        math.nan,
        str(out_dir / checkpoint.CHECKPOINTS / checkpoint.tag_for(step)),
        str(out_dir),
    )
    try:
        with run_lock.unless_in_use(out_dir) as ours:
            if ours:
                replace_file(path, json.dumps(asdict(summary), indent=2) + "\n")
    except OSError as err:  # the run is finished either way; this rank alone would end in a traceback
        _log.warning(f"warning: could not write the finished summary to {path} ({err})")


def _records_of_step(metrics: Path, step: int) -> dict[str, float]:
    found: dict[str, float] = {}
    try:
        lines = metrics.read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            record = json.loads(line)
        except UNPARSABLE:
            continue
        if isinstance(record, dict) and record.get("step") == step:
            found.update({k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return found
