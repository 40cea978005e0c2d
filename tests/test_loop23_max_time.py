"""--max-time counts the wall time from the rank's start, the startup included."""

import time

import pytest

from ngpt_ds.train import stopping


class _StartedAgo:
    """A stand-in for psutil.Process(): this process started `seconds` ago."""

    def __init__(self, seconds: float):
        self.started = time.time() - seconds

    def __call__(self):
        return self

    def create_time(self) -> float:
        return self.started


def test_max_time_counts_the_startup_before_the_first_step(monkeypatch, handlers):
    """Fault: --max-time's clock started when the trainer was built, after the imports, the engine's start and a
    checkpoint's load or conversion (minutes at scale): a job given --max-time 3300 for a one-hour allocation
    whose startup took 10 minutes trained on to 65 minutes and was killed without a checkpoint. A rank that
    started 120 s ago with --max-time 60 is past its deadline at once."""
    monkeypatch.setattr(stopping.psutil, "Process", _StartedAgo(120.0))
    request = stopping.StopRequest(60.0)
    assert request.requested()
    assert request.reason == "--max-time reached"
    assert request.deadline is not None and request.deadline < time.monotonic()


def test_max_time_left_after_the_startup_is_not_a_stop(monkeypatch, handlers):
    """The other side: 10 s of startup leave 3590 s of --max-time 3600; no stop, no reason."""
    monkeypatch.setattr(stopping.psutil, "Process", _StartedAgo(10.0))
    before = time.monotonic()
    request = stopping.StopRequest(3600.0)
    assert not request.requested() and request.reason is None
    assert request.deadline == pytest.approx(before + 3590.0, abs=5.0)
    assert stopping.StopRequest(None).deadline is None
