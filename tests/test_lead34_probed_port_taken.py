"""A one-process run (no launcher, no MASTER_PORT) chooses the port of its own rendezvous, and another process
must not be able to take it before torch listens on it.

CI failed on this: `bench/profile_step.py`, under a parallel test run, stopped with 'rank 0 cannot listen for the
job's rendezvous on 127.0.0.1:40941: another process on this host holds that port': `discover` had probed a free port
(bind, close) that any process opening a connection could be given before torch listened. The first fix retried
other probed ports; now `discover` probes none (port 0) and `init_process_group` starts the rendezvous server on a
port the system gives it, listening before torch looks for it (`distributed._listen_for_rendezvous`). A port the user
gave (MASTER_PORT) is still refused in one line when taken."""

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
if dist_env.master_port:  # the user's: another process's listener holds it
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
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


def test_a_one_process_run_names_no_probed_port_and_listens_on_the_one_it_gets():
    """Fault (first fixed by retrying): the port `distributed.discover` probed was taken by another process before
    `init_process_group` listened on it, and the one-process run stopped with exit 3, 'refused: rank 0 cannot listen
    for the job's rendezvous on 127.0.0.1:N: another process on this host holds that port'. Now there is no probed
    port to take (discover says 0), and the run joins on the port its own server listens on (MASTER_PORT)."""
    proc = _run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    joined = proc.stdout.split()
    assert joined[:2] == ["joined", "1"], proc.stdout
    assert int(joined[2]) == 0  # discover probed nothing
    assert 0 < int(joined[3]) < 65536  # the port the rendezvous server was given, exported for torch


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
