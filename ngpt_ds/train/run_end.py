"""How a training session ends on record: summary.json when it finishes, stops or diverges, and the message that
names the checkpoints left (the Trainer's part that writes them; ngpt_ds.train.loop runs the steps)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ngpt_ds import log
from ngpt_ds.train import divergence
from ngpt_ds.train.divergence import TrainingDiverged
from ngpt_ds.train.metrics import MetricsLogger, stop_all_if_unwritten, write_failure
from ngpt_ds.train.summary import SUMMARY_FILE, Summary, replace_file, summary_json

if TYPE_CHECKING:
    from ngpt_ds.train.config import RunConfig
    from ngpt_ds.train.hypersphere import HypersphereHook
    from ngpt_ds.train.stopping import StopRequest

_log = log.get(__name__)


class RunEnd:
    """Mixed into ngpt_ds.train.loop.Trainer, which sets these attributes."""

    run: RunConfig
    out_dir: Path
    is_main: bool
    device: torch.device
    step: int
    tokens_seen: int
    hook: HypersphereHook | None
    metrics: MetricsLogger
    newest_checkpoint: Path | None
    session_start: float
    last_val_loss: float
    stop: StopRequest

    def _sphere_diverged(self, step: int, train_loss: float) -> None:
        """Raise TrainingDiverged naming the sphere matrices with a NaN or inf norm. Collective: every
        rank calls it (the non-finite flag and the deviations are agreed over the job)."""
        assert self.hook is not None  # only an nGPT run's hook finds non-finite norms
        raise self._diverged(
            divergence.sphere_message(self.hook.deviations(), step, self.run.train.lr) + self._checkpoints_left(),
            step,
            train_loss,
        )

    def _diverged(self, message: str, step: int, train_loss: float) -> TrainingDiverged:
        """The TrainingDiverged to raise on every rank, after rank 0 wrote summary.json saying "diverged" at
        `step` (its `checkpoint`: the newest complete one, what a rerun resumes from; None before any). It had
        been left as the previous session wrote it: "finished" at the old step and max_steps, after a
        --max-steps rerun diverged. A summary that cannot be written is a warning: the run stops with exit 2
        either way, and every rank raises."""
        if self.is_main:
            summary = self._summary(
                "diverged", step, train_loss, self.last_val_loss, self.session_start, self.newest_checkpoint
            )
            path = self.out_dir / SUMMARY_FILE
            try:
                replace_file(path, summary_json(summary))
            except OSError as err:
                file, reason, fix = write_failure(err, path)
                _log.warning(f"warning: the run diverged, but {file} could not be written to say so ({reason}). {fix}")
        return TrainingDiverged(message)

    def _checkpoints_left(self) -> str:
        return divergence.checkpoints_left(self.out_dir, self.newest_checkpoint, self.run.train.checkpoint_interval)

    def _summary(
        self, status: str, step: int, train_loss: float, val_loss: float, since: float, checkpoint: Path | None
    ) -> Summary:
        """summary.json's record of this run at `step`; `since`: the perf_counter time its seconds count from."""
        return Summary(
            status=status,
            step=step,
            max_steps=self.run.train.max_steps,
            tokens=self.tokens_seen,
            train_loss=train_loss,
            val_loss=val_loss,
            seconds=time.perf_counter() - since,
            checkpoint=str(checkpoint) if checkpoint else None,
            out_dir=str(self.out_dir),
            max_time=self.stop.max_time_record(),
            stopped_by=self.stop.describe() if status in ("stopped", "stopped-unsaved") else None,
        )

    def _finish(
        self, status: str, train_loss: float, val_loss: float, start_time: float, newest_checkpoint: Path | None
    ) -> Summary:
        summary = self._summary(status, self.step, train_loss, val_loss, start_time, newest_checkpoint)
        problem, path = None, self.out_dir / SUMMARY_FILE
        if self.is_main:
            try:
                self.metrics.close()
                replace_file(path, summary_json(summary))
            except OSError as err:  # the last save can fill the disk: its free-space check allows that
                file, reason, fix = write_failure(err, path)
                problem = (
                    f"the run ended at step {self.step} ({status}), but {file} could not be written ({reason}). {fix}"
                )
        stop_all_if_unwritten(problem, self.device, self._checkpoints_left)  # reaches every rank; asked only then
        return summary
