"""Unit checks of the launch-environment pieces the cluster launches rely on (no processes)."""

import subprocess
from datetime import timedelta

from ngpt_ds import distributed


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
    monkeypatch.setattr(distributed.socket, "gethostbyname", lambda name: "127.0.1.1")
    monkeypatch.setattr(
        distributed.subprocess,
        "run",
        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout="10.1.2.3 fd00::2 \n", stderr=""),
    )
    assert distributed._routable_address() == "10.1.2.3"
    monkeypatch.setattr(distributed.socket, "gethostbyname", lambda name: "10.9.9.9")
    assert distributed._routable_address() == "10.9.9.9"


def test_slurm_port_matches_the_sbatch_scripts():
    env = distributed.discover(
        {
            "SLURM_PROCID": "0",
            "SLURM_NTASKS": "2",
            "SLURM_STEP_ID": "0",
            "SLURM_JOB_NODELIST": "ngptds[1-2]",
            "SLURM_JOB_ID": "45678",
        }
    )
    assert env.master_port == 20000 + 45678 % 20000
    from conftest import REPO

    for script in ("train.sbatch", "train_deepspeed.sbatch"):
        assert (
            'MASTER_PORT="${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"'
            in (REPO / "launch/slurm" / script).read_text()
        )
