"""The rendezvous address of a multi-node Slurm job is the first node's NodeAddr, the address Slurm itself
reaches it at, not its NodeName: launch/slurm/*.sbatch and the rank discovery of a plain `srun`
(ngpt_ds/distributed.py), run here against a fake `scontrol` and `srun` on PATH.

The fault: MASTER_ADDR was the first name of SLURM_JOB_NODELIST, a NodeName. slurm.conf may give a node a
NodeName no DNS or /etc/hosts entry resolves, with its real address in NodeAddr= (cloud clusters name
nodes by queue and index, e.g. `NodeName=gpu-dy-1 NodeAddr=10.0.3.17`). Every rank's connection to
the rendezvous then failed to resolve the name and was retried until train.dist_timeout_s (600 s by
default) ran out, on every node of the allocation, and the job failed, every time it was submitted.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_sbatch, slurm_env, stand_in_commands

NODE_ADDR = "127.0.0.1"
"""The first node's NodeAddr in the fake slurm.conf below; its NodeName, gpu-dy-1, resolves nowhere."""

FAKE_SCONTROL = f"""#!/bin/bash
# scontrol of a cluster whose NodeNames are not host names (slurm.conf NodeAddr=).
[ "$1" = -o ] && shift
case "$1 $2" in
  "show hostnames") printf 'gpu-dy-1\\ngpu-dy-2\\n' ;;
  "show node")
    for a in "$@"; do
      case "$a" in
        gpu-dy-1) echo "NodeName=gpu-dy-1 Arch=x86_64 CoresPerSocket=1 NodeAddr={NODE_ADDR} NodeHostName=ip-10-0-3-17 Version=22.05.8" ;;
        gpu-dy-2) echo "NodeName=gpu-dy-2 Arch=x86_64 CoresPerSocket=1 NodeAddr=127.0.0.2 NodeHostName=ip-10-0-3-18 Version=22.05.8" ;;
      esac
    done ;;
  *) echo "fake scontrol: unexpected $*" >&2; exit 1 ;;
esac
"""

FAKE_SRUN = """#!/bin/bash
# Records what the tasks would get; starts nothing.
echo "MASTER_ADDR=$MASTER_ADDR" >> "$FAKE_LOG"
"""

FAKE_DEEPSPEED = """#!/bin/bash
# Records the rendezvous the launcher was given; starts nothing.
while [ $# -gt 0 ]; do [ "$1" = --master_addr ] && echo "MASTER_ADDR=$2" >> "$FAKE_LOG"; shift; done
"""


def fake_bin(tmp_path: Path) -> Path:
    return stand_in_commands(
        tmp_path / "bin", {"scontrol": FAKE_SCONTROL, "srun": FAKE_SRUN, "deepspeed": FAKE_DEEPSPEED}
    )


def slurm_job_env(tmp_path: Path) -> dict:
    """Job 4711 on the two nodes of the fake slurm.conf, one task a node."""
    return slurm_env(
        fake_bin(tmp_path),
        FAKE_LOG=tmp_path / "fake.log",
        TMPDIR=tmp_path,
        SLURM_JOB_NODELIST="gpu-dy-[1-2]",
        SLURM_JOB_NUM_NODES=2,
        SLURM_NNODES=2,
        SLURM_TASKS_PER_NODE="1(x2)",
    )


@pytest.mark.parametrize("script", ["train.sbatch", "train_deepspeed.sbatch"])
def test_sbatch_rendezvous_is_the_first_nodes_node_addr(script, tmp_path):
    """Fault: the batch scripts exported the first NodeName as MASTER_ADDR, which need not resolve
    (slurm.conf NodeAddr=): every rank retried it until train.dist_timeout_s and the job failed."""
    proc = run_sbatch(script, slurm_job_env(tmp_path), tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "fake.log").read_text() == f"MASTER_ADDR={NODE_ADDR}\n", proc.stdout
    assert f"master {NODE_ADDR}:{20000 + 4711}," in proc.stdout


def test_srun_discovery_rendezvous_is_the_first_nodes_node_addr(tmp_path):
    """Fault: a plain `srun` job without MASTER_ADDR took the first NodeName as the rendezvous address
    (ngpt_ds/distributed.py), which need not resolve (slurm.conf NodeAddr=)."""
    env = slurm_job_env(tmp_path)
    env.update(SLURM_PROCID="1", SLURM_NTASKS="2", SLURM_LOCALID="0", SLURM_NODEID="1", SLURM_STEP_ID="0")
    code = "from ngpt_ds.distributed import discover; d = discover(); print(d.source, d.master_addr, d.master_port)"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"slurm {NODE_ADDR} {20000 + 4711}\n"


def test_srun_discovery_keeps_a_node_name_that_resolves_without_asking_slurmctld(monkeypatch):
    """Every rank of a plain `srun` job discovers the address: slurmctld is asked only for a name that
    does not resolve."""
    from ngpt_ds import slurm_nodes as distributed  # _scontrol and _first_slurm_host live there

    calls = []

    def scontrol(*args):
        calls.append(args)
        return "localhost\n" if args[:2] == ("show", "hostnames") else "NodeName=localhost NodeAddr=10.9.9.9"

    monkeypatch.setattr(distributed, "_scontrol", scontrol)
    assert distributed._first_slurm_host({"SLURM_JOB_NODELIST": "localhost"}) == "localhost"
    assert calls == [("show", "hostnames", "localhost")]
