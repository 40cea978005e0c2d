"""launch/slurm/*.sbatch refuse a rendezvous port that another process already listens on, on a real
local Slurm cluster (tests/system/slurm_cluster.sh).

The fault: MASTER_PORT comes from the submitting shell when it has one (sbatch passes its environment
on), else from the job id. On a node where another job's rendezvous already listens on that port,
rank 0 died with torch's EADDRINUSE traceback, and the other ranks (srun --kill-on-bad-exit=0)
connected to the other listener and waited there, past train.dist_timeout_s, as long as it ran.
"""

import socket

import pytest

from conftest import REPO, cpu_env, tiny_ngpt, tiny_train, train_flags, write_run_configs

NODES = ["--nodes", 2, "--ntasks-per-node", 1, "--gpus-per-node", 0]
JOB_TIMEOUT = 90  # a hang guard: the old scripts' job never ends while the other listener runs


@pytest.mark.parametrize("script", ["train.sbatch", "train_deepspeed.sbatch"])
def test_rendezvous_port_in_use_fails_the_job_at_once_with_a_message(slurm, script, tiny_dataset, tmp_path):
    """Fault: a MASTER_PORT another process listens on (a leaked MASTER_PORT, another job) hung the job."""
    configs = write_run_configs(tmp_path, tiny_ngpt(), tiny_train(20, dist_timeout_s=10))
    out = tmp_path / "run"
    log = tmp_path / "job.log"
    with socket.socket() as other_job:  # another job's rendezvous: listening on every address, never answering
        other_job.bind(("", 0))
        other_job.listen()
        port = other_job.getsockname()[1]
        job = slurm.submit(
            REPO / "launch/slurm" / script,
            *train_flags(configs["yaml"], configs["ds"], tiny_dataset, out),
            sbatch_args=[*NODES, f"--output={log}"],
            env=cpu_env(MASTER_PORT=port),  # left exported in the submitting shell
            cwd=REPO,
        )
        info = slurm.wait(job, JOB_TIMEOUT)
    text = log.read_text()
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0", (info, text[-3000:])
    assert info["Restarts"] == "0"
    # The first node's NodeAddr: 127.0.0.1 for every node of tests/system/slurm_cluster.sh.
    assert text.strip() == (
        f"error: rendezvous port {port} on 127.0.0.1 is in use by another process; it is MASTER_PORT "
        "from the environment (sbatch passes the submitting shell's on): unset it to use 20000 + job id % 12000"
    ), text[-3000:]
    assert not out.exists()  # no rank was started
