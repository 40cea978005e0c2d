"""launch/slurm/*.sbatch: a requeue that Slurm refuses ends the job with exit 75 and a line saying so. Run here
against a fake `srun` / `deepspeed` (a run that stopped at its time limit, step 40 of 100) and a fake
`scontrol` that refuses the requeue as Slurm does for a job submitted with `sbatch --no-requeue`.

The fault: the scripts ran `scontrol requeue` and exited 0 whatever it answered. A job submitted with
--no-requeue (some clusters ask for it) stopped at its time limit, logged 'requeueing job N to resume',
then scontrol's 'Requested operation is presently disabled for job N', and ended COMPLETED with exit 0 at
step 40 of 100: nothing resumed it, and jobs waiting on it with --dependency=afterok (an evaluation, an
export) started on the unfinished model. Checked on the local Slurm cluster of tests/system: such a job's
`scontrol requeue` exits 1 and the job ends COMPLETED 0:0.
"""

import json

import pytest

from conftest import run_sbatch, slurm_env, stand_in_commands

FAKE_RUN = """#!/bin/bash
printf '%s\\n' "$FAKE_SUMMARY" > "$FAKE_OUT/summary.json"
"""

FAKE_SCONTROL = """#!/bin/bash
echo "scontrol $*" >> "$FAKE_LOG"
[ "$1" = requeue ] && { echo "Requested operation is presently disabled for job $2" >&2; exit 1; }
exit 0
"""


@pytest.mark.parametrize("script", ["train.sbatch", "train_deepspeed.sbatch"])
def test_a_refused_requeue_fails_the_job_with_a_message(script, tmp_path):
    """Fault: a refused requeue (sbatch --no-requeue) ended the job COMPLETED, exit 0, at step 40 of 100."""
    folder = stand_in_commands(tmp_path / "bin", {"srun": FAKE_RUN, "deepspeed": FAKE_RUN, "scontrol": FAKE_SCONTROL})
    out = tmp_path / "run"
    out.mkdir()
    env = slurm_env(
        folder,
        drop=("SLURM_", "MASTER_", "NGPT_"),
        FAKE_LOG=tmp_path / "fake.log",
        FAKE_OUT=out,
        FAKE_SUMMARY=json.dumps({"status": "stopped", "step": 40, "max_steps": 100}, indent=2),
        TMPDIR=tmp_path,
        SLURM_JOB_ID=4713,
    )
    proc = run_sbatch(script, env, out)
    assert (tmp_path / "fake.log").read_text().splitlines()[-1] == "scontrol requeue 4713"
    assert proc.returncode == 75, (proc.stdout, proc.stderr)
    assert proc.stderr.endswith(
        "Requested operation is presently disabled for job 4713\n"
        "[ngpt_ds] could not requeue job 4713 (scontrol's reason above; sbatch --no-requeue?): it stopped at step "
        "40/100; submit the same command again to resume\n"
    )
