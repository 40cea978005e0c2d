"""launch/slurm/*.sbatch on a real local Slurm cluster: munged, slurmctld and two slurmd as two
fake nodes on this machine (tests/system/slurm_cluster.sh), 2 nodes x 1 task on CPU (gloo).

- train.sbatch (plain srun) trains, logs losses and checkpoints;
- a job signalled like Slurm does before its time limit (SIGUSR1) checkpoints, requeues itself
  and the requeued run resumes from that step, reproducing the uninterrupted losses exactly;
- train_deepspeed.sbatch (`deepspeed --launcher slurm`) trains the same way.
"""

import json
import re
import time

import pytest

from conftest import REPO, cpu_env, read_metrics, tiny_ngpt, tiny_train, write_run_configs

STEPS = 100
MODEL = tiny_ngpt()
TRAIN = tiny_train(STEPS, keep_checkpoints=5, dist_timeout_s=30)
NODES = ["--nodes", 2, "--ntasks-per-node", 1, "--gpus-per-node", 0]
JOB_TIMEOUT = 300


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    return write_run_configs(tmp_path_factory.mktemp("slurm_configs"), MODEL, TRAIN)


def submit(slurm, script, out, configs, data):
    log = out.parent / f"{out.name}.log"
    job = slurm.submit(
        REPO / "launch/slurm" / script,
        "--config",
        configs["yaml"],
        "--deepspeed_config",
        configs["ds"],
        "--data",
        data,
        "--out",
        out,
        sbatch_args=[*NODES, f"--output={log}"],
        env=cpu_env(),
        cwd=REPO,
    )
    return job, log


def train_losses(out):
    """step -> train loss, in logging order (a replayed step appears twice)."""
    return [(m["step"], m["train/loss"]) for m in read_metrics(out) if "train/loss" in m]


def assert_finished(out, log_text):
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == STEPS, summary
    assert (out / "checkpoints" / f"step_{STEPS:08d}" / "COMPLETE").is_file()
    assert "| 2 rank(s)," in log_text  # one rank on each fake node


@pytest.fixture(scope="module")
def uninterrupted(slurm, configs, tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("slurm_runs") / "plain"
    job, log = submit(slurm, "train.sbatch", out, configs, tiny_dataset)
    info = slurm.wait(job, JOB_TIMEOUT)
    return job, info, out, log


def test_sbatch_trains_on_two_nodes_logs_losses_and_checkpoints(uninterrupted):
    job, info, out, log = uninterrupted
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, text[-3000:])
    assert info["NumNodes"] == "2" and info["Restarts"] == "0"
    assert_finished(out, text)
    # The first node's NodeAddr (127.0.0.1 for every node of tests/system/slurm_cluster.sh), not its NodeName.
    assert f"master 127.0.0.1:{20000 + int(job) % 12000}" in text
    losses = train_losses(out)
    assert [s for s, _ in losses] == list(range(1, STEPS + 1))
    assert losses[-1][1] < losses[0][1] - 1.0  # it learns


def test_signalled_job_checkpoints_requeues_and_resumes_from_that_step(
    slurm, configs, tiny_dataset, uninterrupted, tmp_path_factory
):
    out = tmp_path_factory.mktemp("slurm_runs") / "preempted"
    job, log = submit(slurm, "train.sbatch", out, configs, tiny_dataset)
    # Wait for the first logged step, then do what --signal=USR1@T does before a time limit.
    deadline = time.monotonic() + JOB_TIMEOUT
    while not ((out / "metrics.jsonl").exists() and train_losses(out)):
        assert time.monotonic() < deadline, f"job {job} never logged a step: {slurm.job(job)}"
        assert slurm.job(job)["JobState"] in ("PENDING", "RUNNING"), log.read_text()[-3000:]
        time.sleep(0.1)
    slurm.signal(job, "USR1")
    info = slurm.wait(job, JOB_TIMEOUT)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, text[-3000:])

    stopped = re.search(r"stopping at step (\d+) \(signal SIGUSR1\)", text)
    assert stopped, text[-3000:]
    stop_step = int(stopped.group(1))
    assert 1 <= stop_step < STEPS
    assert f"stopped at step {stop_step}/{STEPS}: requeueing job {job}" in text
    checkpoint = out / "checkpoints" / f"step_{stop_step:08d}"
    assert (checkpoint / "COMPLETE").is_file()
    assert f"resumed from {checkpoint} at step {stop_step}" in text
    assert text.count(f"[ngpt_ds] job {job} (restart 1)") == 1
    assert_finished(out, text)

    # Every step logged once, and the same losses as the job that was never interrupted (CPU fp32).
    losses = train_losses(out)
    assert [s for s, _ in losses] == list(range(1, STEPS + 1))
    reference = train_losses(uninterrupted[2])
    assert [loss for _, loss in losses] == [loss for _, loss in reference]


def test_deepspeed_slurm_launcher_variant_trains_on_two_nodes(
    slurm, configs, tiny_dataset, uninterrupted, tmp_path_factory
):
    out = tmp_path_factory.mktemp("slurm_runs") / "deepspeed_launcher"
    job, log = submit(slurm, "train_deepspeed.sbatch", out, configs, tiny_dataset)
    info = slurm.wait(job, JOB_TIMEOUT)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, text[-3000:])
    assert re.search(r"cmd = srun -n 2 ", text), text[-3000:]  # DeepSpeed's SlurmRunner, no pdsh
    assert_finished(out, text)
    assert [loss for _, loss in train_losses(out)] == [loss for _, loss in train_losses(uninterrupted[2])]


def test_sbatch_without_out_fails_with_a_message(slurm, tmp_path):
    log = tmp_path / "no_out.log"
    job = slurm.submit(
        REPO / "launch/slurm/train.sbatch",
        "--deepspeed_config",
        "ds_configs/zero2.json",
        sbatch_args=[*NODES, f"--output={log}"],
        env=cpu_env(),
        cwd=REPO,
    )
    info = slurm.wait(job, 60)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0", info
    assert "error: pass --out DIR" in log.read_text()
