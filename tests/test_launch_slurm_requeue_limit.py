"""NGPT_MAX_REQUEUES, the most times launch/slurm/*.sbatch requeue a stopped job, must be a whole number:
the scripts run here against a fake `srun` (a run that stopped at a time limit) and a fake `scontrol`.

The fault: the limit was compared with `[ "$SLURM_RESTART_COUNT" -ge "$NGPT_MAX_REQUEUES" ]`. A value
that is not a number (NGPT_MAX_REQUEUES=ten, =5x) made that test an error, read as "below the limit":
the job trained, stopped, and requeued itself again after every stop, without end, with only
"integer expression expected" in its log.
"""

import json
import subprocess
from pathlib import Path

import pytest

from conftest import run_sbatch, slurm_env, stand_in_commands

FAKE_SRUN = """#!/bin/bash
# A run that stopped at its time limit: summary.json says "stopped" below max_steps.
echo srun >> "$FAKE_LOG"
printf '%s\\n' "$FAKE_SUMMARY" > "$FAKE_OUT/summary.json"
"""

FAKE_DEEPSPEED = FAKE_SRUN.replace("echo srun", "echo deepspeed")

FAKE_SCONTROL = """#!/bin/bash
echo "scontrol $*" >> "$FAKE_LOG"
"""


def run_script(script: str, tmp_path: Path, max_requeues: str) -> tuple[subprocess.CompletedProcess, str]:
    folder = stand_in_commands(
        tmp_path / "bin", {"srun": FAKE_SRUN, "deepspeed": FAKE_DEEPSPEED, "scontrol": FAKE_SCONTROL}
    )
    out = tmp_path / "run"
    out.mkdir()
    summary = {"status": "stopped", "step": 40, "max_steps": 100, "out_dir": str(out)}
    env = slurm_env(
        folder,
        FAKE_LOG=tmp_path / "fake.log",
        FAKE_OUT=out,
        FAKE_SUMMARY=json.dumps(summary, indent=2),
        TMPDIR=tmp_path,
        SLURM_JOB_ID=4712,
        SLURM_RESTART_COUNT=3,
        NGPT_MAX_REQUEUES=max_requeues,
    )
    proc = run_sbatch(script, env, out)
    log = tmp_path / "fake.log"
    return proc, log.read_text() if log.exists() else ""


@pytest.mark.parametrize("script", ["train.sbatch", "train_deepspeed.sbatch"])
@pytest.mark.parametrize("value", ["ten", "5x"])
def test_max_requeues_that_is_not_a_whole_number_is_refused_before_training(script, value, tmp_path):
    """Fault: NGPT_MAX_REQUEUES=ten (not a number) lifted the requeue limit: the job requeued after every stop."""
    proc, calls = run_script(script, tmp_path, value)
    assert proc.returncode == 2, (proc.stdout, proc.stderr, calls)
    assert proc.stderr == (
        f"error: NGPT_MAX_REQUEUES={value!r} is not a whole number: the most times a job stopped before "
        "max_steps requeues itself (unset: 20)\n"
    )
    assert calls == ""  # nothing started, nothing requeued


@pytest.mark.parametrize("script", ["train.sbatch", "train_deepspeed.sbatch"])
@pytest.mark.parametrize(("value", "requeued"), [("3", False), ("4", True), ("0", False)])
def test_max_requeues_limits_the_requeues_of_a_stopped_job(script, value, requeued, tmp_path):
    """The limit itself: restart 3 of a job stopped at step 40/100 requeues below NGPT_MAX_REQUEUES only. At the
    limit the job exits 75, not 0: it ended below max_steps, and --dependency=afterok jobs must not start."""
    proc, calls = run_script(script, tmp_path, value)
    assert proc.returncode == (0 if requeued else 75), (proc.stdout, proc.stderr)
    launcher = "srun" if script == "train.sbatch" else "deepspeed"
    assert calls.splitlines()[-1] == ("scontrol requeue 4712" if requeued else launcher), calls
    assert ("requeued 3 times already: not requeueing" in proc.stderr) is not requeued
