"""Unit checks of the launch-environment pieces the cluster launches rely on (no training processes):
the collective timeout, and the rendezvous address and port each launch path picks."""

import re
import socket
import subprocess
from datetime import timedelta

import pytest

from ngpt_ds import distributed, host_address

from conftest import REPO, cpu_env


def test_collective_timeout_reaches_groups_created_later_without_one():
    from torch.distributed import distributed_c10d as c10d

    saved = c10d.default_pg_timeout, getattr(c10d, "default_pg_nccl_timeout", None)
    try:
        distributed.set_collective_timeout(timedelta(seconds=17))
        # What torch's new_group(timeout=None) uses, e.g. for ZeRO's data-parallel group.
        assert c10d._get_default_timeout(c10d.Backend("gloo")) == timedelta(seconds=17)
    finally:
        c10d.default_pg_timeout = saved[0]
        if saved[1] is not None:
            c10d.default_pg_nccl_timeout = saved[1]


def test_mpi_master_address_is_routable_when_the_host_name_maps_to_loopback(monkeypatch):
    # Host "names" that are address literals resolve, for real, to themselves only.
    monkeypatch.setattr(distributed.socket, "gethostname", lambda: "127.0.1.1")
    monkeypatch.setattr(
        host_address.subprocess,
        "run",
        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout="10.1.2.3 fd00::2 \n", stderr=""),
    )
    assert distributed._routable_address() == "10.1.2.3"
    monkeypatch.setattr(distributed.socket, "gethostname", lambda: "10.9.9.9")
    assert distributed._routable_address() == "10.9.9.9"


@pytest.mark.parametrize("job", [7, 4711, 11999, 12000, 19999, 45678])
def test_slurm_port_matches_the_sbatch_scripts(job):
    """The scripts export the port their tasks meet on; a task started without them (srun in salloc)
    derives it itself: step 0 of a job must get the same one. The scripts' own arithmetic is run."""
    env = distributed.discover(
        {
            "SLURM_PROCID": "0",
            "SLURM_NTASKS": "2",
            "SLURM_STEP_ID": "0",
            "SLURM_JOB_NODELIST": "ngptds[1-2]",
            "SLURM_JOB_ID": str(job),
        }
    )
    assert env.master_port == 20000 + job % 12000
    for script in ("train.sbatch", "train_deepspeed.sbatch"):
        text = (REPO / "launch/slurm" / script).read_text()
        line = re.search(r"^export MASTER_PORT=.*$", text, re.MULTILINE)
        assert line is not None, script
        shell = subprocess.run(
            ["bash", "-c", f"{line[0]}; echo $MASTER_PORT"],
            env={"SLURM_JOB_ID": str(job), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        )
        assert int(shell.stdout) == env.master_port, (script, line[0])
        assert text.count("20000 + job id % 12000") >= 2, script  # the messages name the same rule


def test_single_node_slurm_job_binds_the_rendezvous_to_loopback():
    env = {
        "SLURM_PROCID": "1",
        "SLURM_NTASKS": "2",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_ID": "7",
        "SLURM_TASKS_PER_NODE": "2",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_JOB_NODELIST": "gpu01",
    }
    dist_env = distributed.discover(env)
    assert (dist_env.master_addr, dist_env.master_port) == ("127.0.0.1", 20007)
    two_nodes = distributed.discover(
        {**env, "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[01-02]"}
    )
    assert two_nodes.master_addr == "gpu01"


def test_a_slurm_node_with_fewer_tasks_counts_its_own():
    """Fault: the local world size was the first entry of SLURM_TASKS_PER_NODE, so on "8(x2),4" the third
    node's 4 ranks took 8: its threads, and the startup shard check's sample (split between a node's ranks),
    left shares 4-7 unread there."""
    env = {
        "SLURM_PROCID": "17",
        "SLURM_NTASKS": "20",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_ID": "7",
        "SLURM_TASKS_PER_NODE": "8(x2),4",
        "SLURM_JOB_NUM_NODES": "3",
        "SLURM_JOB_NODELIST": "gpu[01-03]",
    }
    sizes = [distributed.discover({**env, "SLURM_NODEID": str(node)}).local_world_size for node in range(3)]
    assert sizes == [8, 8, 4]
    step = {**env, "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "2,6,4"}  # a step's own layout
    assert distributed.discover(step).local_world_size == 6
    assert distributed.discover({**env, "SLURM_TASKS_PER_NODE": "odd"}).local_world_size == 20


@pytest.mark.parametrize("single_host", [True, False])
def test_free_port_probe_binds_the_address_the_rendezvous_uses(single_host, monkeypatch):
    """mpirun without MASTER_ADDR: rank 0 picks the address and a port. The port must be free on
    that address, not on another one."""
    routable = "10.11.12.13"
    monkeypatch.setattr(distributed, "_routable_address", lambda: routable)
    probed = []
    real_bind = socket.socket.bind

    def recording_bind(sock, address):
        probed.append(address[0])
        return real_bind(sock, ("127.0.0.1", 0))  # the test machine does not own 10.11.12.13

    monkeypatch.setattr(socket.socket, "bind", recording_bind)
    addr, port = distributed.rendezvous_address(single_host=single_host)
    assert addr == ("127.0.0.1" if single_host else routable)
    assert probed == [addr] and port > 0


def test_single_host_deepspeed_hostfile_binds_the_rendezvous_to_loopback(tmp_path):
    (tmp_path / "one").write_text("gpu-a slots=2\n")
    (tmp_path / "two").write_text("gpu-a slots=2\ngpu-b slots=2\n")
    env = cpu_env(DRY_RUN=1)
    env.pop("MASTER_ADDR", None)
    for hostfile, master in (("one", "127.0.0.1"), ("two", "gpu-a")):
        proc = subprocess.run(
            ["bash", REPO / "launch/multinode.sh", "deepspeed", tmp_path / hostfile, "--out", "x"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        words = proc.stdout.split()
        assert proc.returncode == 0 and words[words.index("--master_addr") + 1] == master, proc.stdout + proc.stderr
