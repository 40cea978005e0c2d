"""An NTP step of the wall clock in the middle of a run (-1 h or +1 h) must not stop it, make it overrun --max-time,
or print a negative time left or throughput: every elapsed time (--max-time's limit and margin, the step time, the
tokens/s and the ETA, summary.json's seconds) is measured on a monotonic clock. time.time() is used for timestamps
people read only (summary.json's max_time.started_at and checkpoint_saved_at, the rank's age from the kernel's
process start time, which the kernel moves with the wall clock).

A real run of launch/train.py, whose wall clock (time.time, time.time_ns and the kernel's boot time as psutil
reads it) jumps by the step once the first metrics record is written. No fault was found; this keeps it so.
"""

import json
import sys

import pytest

from conftest import REPO, cpu_env, read_metrics, run, tiny_ngpt, tiny_train, train_cmd, write_run_configs

SHIM = """
import os, time
import psutil._pslinux as _pslinux

_step_s = float(os.environ["WALL_STEP_S"])
_trigger = os.environ["WALL_STEP_WHEN"]  # the wall clock steps once this file exists
_real_time, _real_time_ns, _real_boot = time.time, time.time_ns, _pslinux.boot_time
_stepped = False


def _offset():
    global _stepped
    if not _stepped and os.path.exists(_trigger):
        _stepped = True
    return _step_s if _stepped else 0.0


time.time = lambda: _real_time() + _offset()
time.time_ns = lambda: _real_time_ns() + int(_offset() * 1e9)
_pslinux.boot_time = lambda: _real_boot() + _offset()  # /proc/stat's btime moves with the wall clock
"""

STEPS = 40


@pytest.mark.parametrize("step_s", [-3600.0, 3600.0])
def test_a_wall_clock_step_mid_run_changes_no_elapsed_time(step_s, tmp_path, tiny_dataset):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SHIM)
    configs = write_run_configs(tmp_path, tiny_ngpt(), tiny_train(STEPS))
    out = tmp_path / "run"
    env = cpu_env(WALL_STEP_S=step_s, WALL_STEP_WHEN=out / "metrics.jsonl")
    env["PYTHONPATH"] = f"{shim}:{REPO}"
    proc = run(
        [sys.executable, *train_cmd(configs["yaml"], configs["ds"], tiny_dataset, out, "--max-time", "600")], env=env
    )
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["step"]) == ("finished", STEPS), proc.stdout[-3000:]
    assert summary["max_time"]["limit_s"] == 600 and summary["max_time"]["stopped_early_s"] is None
    assert 0 < summary["seconds"] < 600  # the session's monotonic seconds, not the step
    assert "--max-time" not in proc.stdout and "stopping" not in proc.stdout
    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for r in records:
        assert r["throughput/tokens_per_s"] > 0 and 0 < r["throughput/step_time_s"] < 60, r
    etas = [
        line.rsplit("eta ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("step ") and "eta " in line
    ]
    assert len(etas) == STEPS and all(not eta.startswith("-") and "h" not in eta for eta in etas), etas
    # The shim did step the clock: summary.json's timestamps for people show it (the save ended after the step).
    saved, started = summary["max_time"]["checkpoint_saved_at"], summary["max_time"]["started_at"]
    assert (saved - started < 0) if step_s < 0 else (saved - started > 3600), (saved, started)
