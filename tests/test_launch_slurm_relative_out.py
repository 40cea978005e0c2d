"""launch/slurm/*.sbatch refuse a relative --out when SRUN_ARGS / LAUNCH_PREFIX move the tasks' working
directory (the headers' own container examples): the scripts run here against a fake `srun` that does
what pyxis's --container-workdir does (the task starts in that folder, here a stand-in for the
container's own filesystem) and a fake `scontrol`.

The fault: --out runs/x resolved in the container's working directory for the ranks, so checkpoints,
metrics and summary.json went into the container, gone when the job ended, while the batch script
read runs/x/summary.json in the submit directory: a job stopped at its time limit was not requeued,
and what it trained was lost.
"""

import pytest

from conftest import run_sbatch, slurm_env, stand_in_commands

FAKE_SRUN = """#!/bin/bash
# pyxis: the task runs in --container-workdir; it trains and stops at the time limit.
for a in "$@"; do case "$a" in --container-workdir=*) cd "${a#*=}" ;; esac; done
echo srun >> "$FAKE_LOG"
mkdir -p runs/x && printf '{\\n  "status": "stopped",\\n  "step": 40,\\n  "max_steps": 100\\n}\\n' > runs/x/summary.json
"""

FAKE_SCONTROL = """#!/bin/bash
echo "scontrol $*" >> "$FAKE_LOG"
"""


@pytest.mark.parametrize(
    ("srun_args", "launch_prefix", "flag"),
    [
        ("--container-image=reg/ngpt_ds:1 --container-workdir={container}", "", "--container-workdir={container}"),
        ("", "apptainer exec --nv --pwd /opt/ngpt_ds ngpt_ds.sif", "--pwd"),
    ],
)
def test_relative_out_with_a_container_workdir_is_refused(srun_args, launch_prefix, flag, tmp_path):
    """Fault: a relative --out under SRUN_ARGS=--container-workdir went into the container (lost at the job's
    end) and the stopped job was not requeued: the batch script read summary.json in the submit directory."""
    container = tmp_path / "container"
    container.mkdir()
    submit_dir = tmp_path / "submit"
    submit_dir.mkdir()
    folder = stand_in_commands(tmp_path / "bin", {"srun": FAKE_SRUN, "scontrol": FAKE_SCONTROL})
    env = slurm_env(
        folder,
        drop=("SLURM_", "MASTER_", "NGPT_"),
        FAKE_LOG=tmp_path / "fake.log",
        SRUN_ARGS=srun_args.format(container=container),
        LAUNCH_PREFIX=launch_prefix,
        SLURM_JOB_ID=4713,
    )
    proc = run_sbatch("train.sbatch", env, "runs/x", cwd=submit_dir)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr == (
        "error: --out runs/x is relative, and SRUN_ARGS/LAUNCH_PREFIX move the tasks' working directory "
        f"({flag.format(container=container)}): pass an absolute --out on a filesystem every node (and "
        "container) mounts\n"
    )
    assert not (tmp_path / "fake.log").exists()  # nothing started
    assert not (container / "runs").exists()


def test_relative_out_without_container_flags_still_runs(tmp_path):
    """Without a working-directory flag the tasks start in the submit directory: runs/x is the same folder
    for them and the script, and the stopped job is requeued."""
    submit_dir = tmp_path / "submit"
    submit_dir.mkdir()
    folder = stand_in_commands(tmp_path / "bin", {"srun": FAKE_SRUN, "scontrol": FAKE_SCONTROL})
    env = slurm_env(
        folder,
        drop=("SLURM_", "MASTER_", "NGPT_"),
        FAKE_LOG=tmp_path / "fake.log",
        SRUN_ARGS="--container-image=reg/ngpt_ds:1",
        SLURM_JOB_ID=4714,
    )
    proc = run_sbatch("train.sbatch", env, "runs/x", cwd=submit_dir)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "fake.log").read_text() == "srun\nscontrol requeue 4714\n"
