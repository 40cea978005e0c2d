"""Launching without Slurm, for real, on gloo:

- `mpirun --allow-run-as-root -np 2 python launch/train.py ...`: ranks and rank 0's address come
  from OpenMPI's environment and mpi4py (ngpt_ds/distributed.py);
- launch/multinode.sh deepspeed with a localhost hostfile: DeepSpeed's launcher starts both ranks
  locally, no ssh;
- launch/multinode.sh deepspeed with a two-host hostfile: DeepSpeed runs pdsh, which ssh-es into
  each "host" (a local sshd started by the test) to start its per-node launcher;
- launch/multinode.sh mpi: the mpirun command it builds from a hostfile.
"""

import importlib.util
import json
import shutil
import sys

import pytest
from system.harness import local_sshd, sshd_available

from conftest import (
    REPO,
    cpu_env,
    free_port,
    read_metrics,
    require_system,
    run,
    tiny_ngpt,
    tiny_train,
    train_flags,
    write_run_configs,
)

STEPS = 20
MODEL = tiny_ngpt()
TRAIN = tiny_train(STEPS, keep_checkpoints=2, dist_timeout_s=30)


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    return write_run_configs(tmp_path_factory.mktemp("multinode_configs"), MODEL, TRAIN)


def train_args(configs, data, out):
    return train_flags(configs["yaml"], configs["ds"], data, out)


def assert_trained_on_two_ranks(out, stdout):
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == STEPS, summary
    assert summary["tokens"] == STEPS * 2 * 4 * MODEL["seq_len"]  # 2 ranks x micro-batch 4
    assert (out / "checkpoints" / f"step_{STEPS:08d}" / "COMPLETE").is_file()
    losses = [m["train/loss"] for m in read_metrics(out) if "train/loss" in m]
    assert len(losses) == STEPS and losses[-1] < losses[0] - 0.1
    assert "| 2 rank(s)," in stdout
    return losses


def test_mpirun_two_ranks_through_mpi4py_discovery(configs, tiny_dataset, tmp_path):
    require_system(
        shutil.which("mpirun") is not None and importlib.util.find_spec("mpi4py") is not None,
        "OpenMPI or mpi4py not installed: bash launch/setup.sh --test",
    )
    out = tmp_path / "mpi"
    env = cpu_env()
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):
        env.pop(var, None)  # everything must come from mpirun and mpi4py
    proc = run(
        [
            "mpirun",
            "--allow-run-as-root",
            "-np",
            2,
            "-x",
            "OMP_NUM_THREADS",
            "-x",
            "PYTHONPATH",
            "-x",
            "DS_ACCELERATOR",
            sys.executable,
            REPO / "launch/train.py",
            *train_args(configs, tiny_dataset, out),
        ],
        env=env,
        timeout=300,
    )
    assert_trained_on_two_ranks(out, proc.stdout)


def test_deepspeed_launcher_with_localhost_hostfile_runs_without_ssh(configs, tiny_dataset, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    out = tmp_path / "ds_local"
    env = cpu_env(MASTER_PORT=free_port(), PATH=f"{tmp_path / 'nossh'}:{cpu_env()['PATH']}")
    # An ssh that fails loudly: a single-host hostfile must not use it.
    (tmp_path / "nossh").mkdir()
    for tool in ("ssh", "pdsh"):
        (tmp_path / "nossh" / tool).write_text('#!/bin/sh\necho "$0 must not be called" >&2\nexit 97\n')
        (tmp_path / "nossh" / tool).chmod(0o755)
    proc = run(
        ["bash", REPO / "launch/multinode.sh", "deepspeed", hostfile, *train_args(configs, tiny_dataset, out)],
        env=env,
        timeout=300,
    )
    assert_trained_on_two_ranks(out, proc.stdout + proc.stderr)
    assert "must not be called" not in proc.stderr


def test_deepspeed_launcher_over_pdsh_and_ssh_on_two_hosts(configs, tiny_dataset, tmp_path):
    ok, reason = sshd_available()
    require_system(ok, reason)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")  # two names, two "nodes"
    out = tmp_path / "ds_pdsh"
    with local_sshd(tmp_path / "sshd") as ssh_options:
        env = cpu_env(
            MASTER_PORT=free_port(),
            PDSH_SSH_ARGS_APPEND=ssh_options,
            # DeepSpeed's own reachability probe runs plain `ssh HOST` without our key.
            DEEPSPEED_ARGS="--no_ssh_check",
        )
        proc = run(
            ["bash", REPO / "launch/multinode.sh", "deepspeed", hostfile, *train_args(configs, tiny_dataset, out)],
            env=env,
            timeout=300,
        )
        sessions = (tmp_path / "sshd" / "sshd.log").read_text().count("Accepted publickey for root")
    text = proc.stdout + proc.stderr
    assert "cmd = pdsh -S -f 1024 -w localhost,127.0.0.1" in text
    # pdsh prefixes each line with the host it came from: one per-node launcher on each host.
    assert "localhost: " in text and "127.0.0.1: " in text
    assert "node_rank=0" in text and "node_rank=1" in text
    assert sessions >= 2
    assert_trained_on_two_ranks(out, text)


def test_multinode_mpi_builds_mpirun_from_the_hostfile(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\nnode-a slots=4\n\nnode-b slots=4\n")
    env = cpu_env(DRY_RUN=1, NCCL_DEBUG="INFO", MPI_ARGS="--mca btl_tcp_if_include eth0")
    env.pop("MASTER_ADDR", None)
    proc = run(["bash", REPO / "launch/multinode.sh", "mpi", hostfile, "--out", "/shared/run"], env=env)
    words = proc.stdout.split()
    assert words[:6] == ["mpirun", "--hostfile", str(hostfile), "-np", "8", "--bind-to"]
    assert ["-x", "NCCL_DEBUG"] == words[words.index("NCCL_DEBUG") - 1 : words.index("NCCL_DEBUG") + 1]
    assert words[-3:] == [str(REPO / "launch/train.py"), "--out", "/shared/run"]
    assert "MASTER_ADDR" not in words  # rank 0's address comes through mpi4py
    assert "btl_tcp_if_include" in words
    bad = run(["bash", REPO / "launch/multinode.sh", "mpi", tmp_path / "missing"], env=env, check=False)
    assert bad.returncode == 2 and "hostfile" in bad.stderr
