"""launch/slurm/prepare.sbatch re-runs single parts of a finished array, as its header tells: the script
run here with a fake interpreter (PYTHON) that records the command it would run, and a fake `sbatch`.

The fault: the header's way to redo a failed part, `sbatch --array=K ... --overwrite`, was refused for
any K but 0 ("the array must be 0..N-1 without gaps (got K..K, 1 tasks)"), and --array=0 tokenized the
whole corpus again on one node, as part 0 of 1 (--num-shards 1, overriding any the user gave), and
submitted a merge of that part over --out: a single-process preparation, the days the array was
there to save. Now such a re-run names the array's part count with --num-shards N, and the task
tokenizes part K of N, submitting no merge.
"""

import os
import subprocess

import pytest

from conftest import REPO, stand_in_commands

FAKE_PYTHON = """#!/bin/bash
echo "python $*" >> "$FAKE_LOG"
"""

FAKE_SBATCH = """#!/bin/bash
echo "sbatch $*" >> "$FAKE_LOG"
echo 99
"""


def run_task(
    tmp_path, task: int, array: tuple[int, int, int], *args: str, restarts: int = 0
) -> tuple[subprocess.CompletedProcess, str]:
    folder = stand_in_commands(tmp_path / "bin", {"python": FAKE_PYTHON, "sbatch": FAKE_SBATCH})
    low, high, count = array
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        PATH=f"{folder}:{env['PATH']}",
        PYTHON=str(folder / "python"),
        FAKE_LOG=str(tmp_path / "fake.log"),
        SLURM_ARRAY_JOB_ID="500",
        SLURM_ARRAY_TASK_ID=str(task),
        SLURM_ARRAY_TASK_MIN=str(low),
        SLURM_ARRAY_TASK_MAX=str(high),
        SLURM_ARRAY_TASK_COUNT=str(count),
    )
    if restarts:  # Slurm sets it in a requeued job only
        env["SLURM_RESTART_COUNT"] = str(restarts)
    proc = subprocess.run(
        ["bash", str(REPO / "launch/slurm/prepare.sbatch"), "--tokenizer", "tok.model", "--out", "/shared/d", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    log = tmp_path / "fake.log"
    return proc, log.read_text() if log.exists() else ""


FAKE = "python launch/prepare_data.py --workers 0 --tokenizer tok.model --out /shared/d"


@pytest.mark.parametrize("flag", [["--num-shards", "8"], ["--num-shards=8"]])
@pytest.mark.parametrize("task", [3, 0])
def test_failed_part_is_rerun_alone_as_part_k_of_n(task, flag, tmp_path):
    """Fault: `sbatch --array=K ... --overwrite` (the header's re-run of a failed part) was refused, or for
    K = 0 tokenized the whole corpus as part-0-of-1 and merged it over --out."""
    proc, calls = run_task(tmp_path, task, (task, task, 1), *flag, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert calls == f"{FAKE} {' '.join(flag)} --overwrite --num-shards 8 --shard-index {task}\n"  # no merge job
    assert f"part {task} of 8" in proc.stdout
    assert "merge: cd " in proc.stdout  # the command to run by hand once every part is there


def test_rerun_of_a_part_outside_the_count_is_refused(tmp_path):
    proc, calls = run_task(tmp_path, 8, (8, 8, 1), "--num-shards", "8", "--overwrite")
    assert proc.returncode == 2 and calls == ""
    assert proc.stderr == "error: array task 8 is no part of --num-shards 8 (parts 0..7)\n"


def test_whole_array_still_numbers_its_parts_and_submits_the_merge(tmp_path):
    proc, calls = run_task(tmp_path, 0, (0, 3, 4))
    assert proc.returncode == 0, proc.stderr
    sbatch, python = calls.splitlines()
    assert sbatch.startswith("sbatch --parsable --job-name=ngpt-prepare-merge") and "afterok:500" in sbatch
    assert python == f"{FAKE} --num-shards 4 --shard-index 0"
    # The whole array with its own part count named: the same.
    (tmp_path / "named").mkdir()
    proc, calls = run_task(tmp_path / "named", 0, (0, 3, 4), "--num-shards", "4")
    assert proc.returncode == 0 and calls.startswith("sbatch --parsable"), proc.stderr
    (tmp_path / "gaps").mkdir()
    gaps, calls = run_task(tmp_path / "gaps", 2, (2, 3, 2))
    assert gaps.returncode == 2 and calls == ""
    assert gaps.stderr == (
        "error: the array must be 0..N-1 without gaps (got 2..3, 2 tasks); to re-run parts of an earlier "
        "array, add --num-shards N\n"
    )


def test_requeued_task_zero_submits_no_second_merge(tmp_path):
    """Fault: task 0, requeued (preemption, a node failure), submitted the merge job again; the two merged
    into --out at the same time once the array was done. The first run's merge job still waits for the
    whole array, so the restarted task only tokenizes its part."""
    proc, calls = run_task(tmp_path, 0, (0, 3, 4), restarts=1)
    assert proc.returncode == 0, proc.stderr
    assert calls == f"{FAKE} --num-shards 4 --shard-index 0\n"  # no sbatch
    assert "task 0 restarted (1): the merge job its first run submitted still waits for array job 500" in proc.stdout


@pytest.mark.parametrize("flag", [["--workers", "8"], ["--workers=8"]])
def test_the_users_workers_replaces_the_default_instead_of_following_it(flag, tmp_path):
    """Fault (review30a): the script put `--workers $SLURM_CPUS_PER_TASK` in front of the user's arguments; once
    prepare_data refused an option given twice with different values (60088ca), the header's invitation to
    override it ended every task with "--workers given twice (0, then 8)"."""
    proc, calls = run_task(tmp_path, 0, (0, 1, 2), *flag)
    assert proc.returncode == 0, proc.stderr
    command = calls.splitlines()[-1]
    assert command == (
        f"python launch/prepare_data.py --tokenizer tok.model --out /shared/d {' '.join(flag)} --num-shards 2 "
        "--shard-index 0"
    )
