"""launch/slurm/*.sbatch requeue only on a summary.json that the job itself wrote, on a real local
Slurm cluster (tests/system/slurm_cluster.sh).

The fault: the scripts read <out>/summary.json after srun exits 0 and requeue when it says "stopped"
below max_steps. A job that writes no summary.json (`--dry-run`, or an --out already trained to
max_steps) in the --out of an earlier job that was stopped read that job's file and requeued itself,
NGPT_MAX_REQUEUES times (default 20, each held ~2 min by Slurm).
"""

import dataclasses
import json

import pytest

from conftest import REPO, cpu_env, tiny_ngpt, tiny_train, train_flags, write_run_configs

JOB_TIMEOUT = 300


@pytest.mark.parametrize("script", ["train.sbatch", "train_deepspeed.sbatch"])
def test_dry_run_job_on_a_stopped_runs_out_is_not_requeued_by_its_stale_summary(slurm, script, tiny_dataset, tmp_path):
    """Fault: a stale "stopped" summary.json from an earlier job made a --dry-run job requeue itself."""
    from ngpt_ds.train.loop import Summary, replace_file

    configs = write_run_configs(tmp_path, tiny_ngpt(), tiny_train(1000))
    out = tmp_path / "run"
    out.mkdir()
    (out / "train.lock").touch()  # the earlier job's run folder: the trainer refuses a summary.json elsewhere
    # What the trainer wrote when an earlier job of this --out stopped at step 220 (its own writer).
    stale = Summary("stopped", 220, 1000, 28160, 3.9, float("nan"), 3.0, None, str(out))
    replace_file(out / "summary.json", json.dumps(dataclasses.asdict(stale), indent=2) + "\n")
    before = (out / "summary.json").read_text()
    log = tmp_path / "job.log"
    job = slurm.submit(
        REPO / "launch/slurm" / script,
        *train_flags(configs["yaml"], configs["ds"], tiny_dataset, out, "--dry-run"),
        sbatch_args=["--nodes", 1, "--ntasks-per-node", 1, "--gpus-per-node", 0, f"--output={log}"],
        env=cpu_env(NGPT_MAX_REQUEUES=1),  # the old scripts requeue once, then stop
        cwd=REPO,
    )
    info = slurm.wait(job, JOB_TIMEOUT)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, text[-3000:])
    assert info["Restarts"] == "0", (info, text[-3000:])
    assert text.count("every startup check passed") == 1, text[-3000:]
    assert ": requeueing job" not in text and "requeued 1 times" not in text, text[-3000:]
    assert f"[ngpt_ds] {out}/summary.json is from an earlier job" in text, text[-3000:]
    assert (out / "summary.json").read_text() == before
