"""launch/slurm/*.sbatch: torchrun's variables left in the submitting shell do not reach the tasks, which take
their ranks from Slurm. Run here against a fake `srun` and `deepspeed` on PATH that start one task of two
(SLURM_PROCID=1) and record what rank discovery (ngpt_ds/distributed.py) gives it.

The fault: sbatch passes the submitting shell's whole environment on. From a shell where a run had been
started by hand (RANK=0 WORLD_SIZE=1 MASTER_ADDR=... MASTER_PORT=... exported), every task read RANK and
WORLD_SIZE before Slurm's variables and trained as rank 0 of 1: a 16-task job became 16 one-rank runs on
the same --out, without a word.
"""

from pathlib import Path

import pytest

from conftest import REPO, run_sbatch, slurm_env, stand_in_commands

TASK = """#!/bin/bash
# One task of a two-task step, as srun (or DeepSpeed's launcher through srun) starts it.
SLURM_PROCID=1 SLURM_NTASKS=2 SLURM_STEP_ID=0 SLURM_LOCALID=0 SLURM_NODEID=1 PYTHONPATH="$FAKE_REPO" \\
  python3 -c 'from ngpt_ds.distributed import discover; d = discover(); print(d.source, d.rank, d.world_size)' \\
  >> "$FAKE_LOG" 2>&1
"""

SCONTROL = """#!/bin/bash
[ "$1" = -o ] && shift
case "$1 $2" in
  "show hostnames") printf 'node1\\nnode2\\n' ;;
  "show node") echo "NodeName=$3 NodeAddr=127.0.0.1" ;;
esac
"""


def fake_bin(tmp_path: Path) -> Path:
    return stand_in_commands(tmp_path / "bin", {"srun": TASK, "deepspeed": TASK, "scontrol": SCONTROL})


@pytest.mark.parametrize("script", ["train.sbatch", "train_deepspeed.sbatch"])
def test_ranks_come_from_slurm_not_from_the_submitting_shell(script, tmp_path):
    """Fault: RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 from the submitting shell made each task rank 0 of 1."""
    env = slurm_env(
        fake_bin(tmp_path),
        drop=("SLURM_", "MASTER_", "LOCAL_"),
        FAKE_LOG=tmp_path / "fake.log",
        FAKE_REPO=REPO,
        TMPDIR=tmp_path,
        SLURM_JOB_NODELIST="node[1-2]",
        SLURM_JOB_NUM_NODES=2,
        SLURM_NNODES=2,
        SLURM_TASKS_PER_NODE="1(x2)",
    )
    # What a run started by hand left exported in the submitting shell:
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29511")
    proc = run_sbatch(script, env, tmp_path / "run", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "fake.log").read_text() == "slurm 1 2\n"
    assert (
        "[ngpt_ds] ignoring RANK WORLD_SIZE LOCAL_RANK from the submitting shell: the tasks' ranks come from Slurm\n"
        in (proc.stdout)
    )
