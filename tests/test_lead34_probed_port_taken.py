"""A one-process run (no launcher, no MASTER_PORT) probes a free port for its own rendezvous, and another process
may take that port before torch listens on it: any process opening a connection can be given it.

CI failed on this: `bench/profile_step.py`, under a parallel test run, stopped with 'rank 0 cannot listen for the
job's rendezvous on 127.0.0.1:40941: another process on this host holds that port'. Nobody else was told a port
ngpt_ds chose itself, so the run takes another; a port the user gave (MASTER_PORT) is still refused in one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TAKE_THE_PROBED_PORT = """
import os, socket, sys
import torch.distributed as dist
from ngpt_ds import distributed
from ngpt_ds.distributed import RendezvousError
from ngpt_ds.train.builder import init_process_group

env = {"MASTER_PORT": sys.argv[1]} if len(sys.argv) > 1 else {}
dist_env = distributed.discover(env)
holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # another process's listener, on the probed port
holder.bind((dist_env.master_addr, dist_env.master_port))
holder.listen()
try:
    init_process_group(dist_env, timeout_s=30)
except RendezvousError as err:
    print("refused:", err, flush=True)
    distributed.exit_process(3, joined=True)
dist.barrier()
print("joined", dist.get_world_size(), dist_env.master_port, os.environ["MASTER_PORT"], flush=True)
dist.destroy_process_group()
distributed.exit_process(0, joined=True)
"""


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    env = {k: v for k, v in env.items() if not k.startswith(("SLURM_", "OMPI_", "PMI", "PMIX_"))}
    env.update(DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", TAKE_THE_PROBED_PORT, *args], env=env, capture_output=True, text=True, timeout=180
    )


def test_a_probed_port_taken_before_the_rendezvous_listens_is_replaced_by_another():
    """Fault: the port `distributed.discover` probed was taken by another process before `init_process_group`
    listened on it, and the one-process run stopped. Old code: exit 3, 'refused: rank 0 cannot listen for the
    job's rendezvous on 127.0.0.1:N: another process on this host holds that port'."""
    proc = _run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    joined = proc.stdout.split()
    assert joined[:2] == ["joined", "1"], proc.stdout
    probed, used = int(joined[2]), int(joined[3])
    assert used != probed  # the process group listens on another port, and MASTER_PORT says which


def test_a_taken_port_the_user_gave_is_still_refused_in_one_line():
    """MASTER_PORT is the user's (or the launcher's) choice, which other ranks may be told: never changed behind
    their back."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = _run(str(port))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert proc.stdout.strip() == (
        f"refused: rank 0 cannot listen for the job's rendezvous on 127.0.0.1:{port}: another process on this host "
        "holds that port (another job?). Set MASTER_PORT to a free port, or stop the other job"
    )
