"""SIGUSR1 and SIGUSR2 during a rank's startup: kept for the stop request, instead of killing the rank.

Slurm's warning before a time limit (`--signal=USR1@180` in launch/slurm/train.sbatch; many sites use
`--signal=USR2@T`) and `scancel --signal=USR1|USR2` ask for a stop and requeue (README "Stopping a run").
The handler that obeys them exists only once training starts (`ngpt_ds.train.stopping.StopRequest`);
before it, the signal's default action ended the rank ("User defined signal 1", exit -10) during the
imports, the engine's start or a universal conversion, and the batch script, seeing a failed step, did
not requeue: the chain of a week-long job stopped there. `record` keeps such a signal from a rank's first
line on, and `StopRequest` takes it over, so the run stops at its first step boundary with a checkpoint.

Only the warning signals: SIGTERM, SIGINT and SIGHUP during the startup still end the rank at once,
as their senders (and a user pressing Ctrl-C) expect; nothing trained is lost then.
Dependency-free on purpose: it runs before torch is imported.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import FrameType

WARNING_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
"""Requests to checkpoint and stop that come ahead of time (no grace period). SIGUSR2 was documented as one
(launch/entrypoint.py passes it on to the ranks) but no rank handled it: its default action killed the
rank, without a checkpoint."""

_received: list[int] = []


def _keep(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)


def record() -> None:
    """From now until `take`: keep warning signals (call in the main thread, first thing)."""
    for sig in WARNING_SIGNALS:
        signal.signal(sig, _keep)


def take() -> list[int]:
    """The numbers of the warning signals kept so far, oldest first. Call it after installing the
    handlers that replace `record`'s, so that none is missed in between."""
    kept = list(_received)
    _received.clear()
    return kept
