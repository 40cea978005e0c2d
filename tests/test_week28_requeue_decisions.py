"""launch/slurm/*.sbatch's requeue decision over a week of restarts, with the trainer's outcomes faked by a stub
`srun` / `deepspeed` (what it exits with, what summary.json it leaves) and a stub `scontrol` that logs.

A job that fails the same way at every startup (bad config, missing data, a refusal: exit 2; a crash: 1; records
that cannot be written: 74; a stop too late to save: 75) must end with that status and never requeue, at any
restart count; a finished run must not requeue; a stopped one requeues below NGPT_MAX_REQUEUES only. The real
cluster's signalled requeue is tests/test_launch_slurm.py's; the limit's parsing tests/test_launch_slurm_requeue_limit.py's.
"""

import json
from pathlib import Path

import pytest

from conftest import run_sbatch, slurm_env, stand_in_commands

STUB_LAUNCHER = """#!/bin/bash
# The trainer's outcome: FAKE_SUMMARY written to summary.json (when set), then exit FAKE_RC.
echo "$(basename "$0")" >> "$FAKE_LOG"
if [ -n "$FAKE_SUMMARY" ]; then printf '%s\\n' "$FAKE_SUMMARY" > "$FAKE_OUT/summary.json"; fi
exit "$FAKE_RC"
"""

STUB_SCONTROL = """#!/bin/bash
echo "scontrol $*" >> "$FAKE_LOG"
"""


def job(script: str, tmp_path: Path, rc: int, summary: dict | None, restart: int) -> tuple[int, list[str], str]:
    """Run `script` once as Slurm would at restart `restart`: (its exit status, the commands it ran, its stderr)."""
    folder = stand_in_commands(
        tmp_path / "bin", {"srun": STUB_LAUNCHER, "deepspeed": STUB_LAUNCHER, "scontrol": STUB_SCONTROL}
    )
    out = tmp_path / "run"
    out.mkdir(exist_ok=True)
    log = tmp_path / "fake.log"
    log.unlink(missing_ok=True)
    env = slurm_env(
        folder,
        drop=("SLURM_", "MASTER_", "NGPT_MAX"),
        FAKE_LOG=log,
        FAKE_OUT=out,
        FAKE_RC=rc,
        FAKE_SUMMARY=json.dumps(summary, indent=2) if summary else "",
        TMPDIR=tmp_path,
        SLURM_JOB_ID=5120,
        SLURM_RESTART_COUNT=restart,
    )
    proc = run_sbatch(script, env, out)
    calls = log.read_text().splitlines() if log.exists() else []
    return proc.returncode, [c for c in calls if not c.startswith("scontrol show")], proc.stderr  # the hostfile's


def summary(status: str, step: int, max_steps: int = 1000) -> dict:
    """summary.json as the trainer writes it (ngpt_ds.train.summary.Summary), nested max_time record included."""
    return {
        "status": status,
        "step": step,
        "max_steps": max_steps,
        "tokens": 128 * step,
        "train_loss": 3.5,
        "val_loss": None,
        "seconds": 3600.0,
        "checkpoint": f"/runs/x/checkpoints/step_{step:08d}",
        "out_dir": "/runs/x",
        "max_time": {"limit_s": 3600, "started_at": 1.0, "checkpoint_saved_at": 2.0, "stopped_early_s": 12.5},
        "stopped_by": "signal SIGUSR1",
    }


SCRIPTS = ["train.sbatch", "train_deepspeed.sbatch"]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("rc", [1, 2, 74, 75, 137])
def test_a_job_failing_at_every_startup_never_requeues_and_keeps_its_status(script, rc, tmp_path):
    """Restarts 0, 1 and 19 of a job whose trainer fails the same way each time (and leaves an earlier job's
    "stopped" summary.json in place): the script exits with the trainer's status and runs no scontrol."""
    launcher = "srun" if script == "train.sbatch" else "deepspeed"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(json.dumps(summary("stopped", 400), indent=2) + "\n")
    for restart in (0, 1, 19):
        status, calls, stderr = job(script, tmp_path, rc, None, restart)
        assert (status, calls) == (rc, [launcher]), (restart, stderr)
        assert "training failed (" in stderr and f"exit {rc})" in stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_failure_after_the_trainer_wrote_a_stopped_summary_does_not_requeue(script, tmp_path):
    """A nonzero status wins over a fresh "stopped" summary.json (a rank crashed after rank 0 wrote it)."""
    status, calls, _ = job(script, tmp_path, 1, summary("stopped", 400), 0)
    assert status == 1 and not any(c.startswith("scontrol") for c in calls)


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("restart", [0, 5, 25])
def test_a_finished_run_never_requeues(script, restart, tmp_path):
    status, calls, stderr = job(script, tmp_path, 0, summary("finished", 1000), restart)
    assert (status, len(calls), stderr) == (0, 1, "")


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_stop_at_max_steps_does_not_requeue(script, tmp_path):
    """A stop that came at the last step (its checkpoint is the final one) has nothing left to train."""
    status, calls, _ = job(script, tmp_path, 0, summary("stopped", 1000), 0)
    assert (status, len(calls)) == (0, 1)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_stopped_run_requeues_each_restart_below_the_limit_then_stops(script, tmp_path):
    """A week of daily time limits: each job stops at its limit and requeues, 20 times (the default limit), then
    the 21st start says why it does not requeue. The nested max_time record (its own numbers) does not confuse the
    script's reading of "step" and "max_steps"."""
    for restart in range(21):
        step = 40 * (restart + 1)
        status, calls, stderr = job(script, tmp_path, 0, summary("stopped", step), restart)
        assert status == (0 if restart < 20 else 75), (restart, stderr)  # 75: not finished, not requeued
        if restart < 20:
            assert calls[-1] == "scontrol requeue 5120", (restart, calls, stderr)
        else:
            assert not any(c.startswith("scontrol") for c in calls), calls
            assert f"stopped at step {step}, but requeued 20 times already: not requeueing" in stderr
