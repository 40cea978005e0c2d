"""A MASTER_PORT held by another program that listens and never answers (accepts nothing): a real 2-rank mpirun
job on gloo.

The fault: rank 0 cannot listen on the port and says so in one line, but rank 1's store client connects to that
program (the kernel accepts on its behalf) and waits for a reply for good, past train.dist_timeout_s; rank 0 waits
for it in MPI_Finalize. The job ended only when the other program closed its port (81 s with a 30 s timeout)."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import sys
import time

from ngpt_ds import rendezvous_failures

from conftest import cpu_env, require_system, run_mpirun

RANK = """
import sys
import torch.distributed as dist
from ngpt_ds import distributed
from ngpt_ds.distributed import RendezvousError
from ngpt_ds.train.builder import init_process_group

dist_env = distributed.discover()
out = open(f"{sys.argv[1]}/rank{dist_env.rank}", "w")  # one file a rank: mpirun interleaves the ranks' output
sys.stderr = out  # the watch's line too
try:
    init_process_group(dist_env, timeout_s=int(sys.argv[2]))
except RendezvousError as err:
    print("refused:", err, file=out, flush=True)
    distributed.exit_process(3, joined=True)
dist.barrier()
print("joined", file=out, flush=True)
dist.destroy_process_group()
distributed.exit_process(0, joined=True)
"""

TIMEOUT_S = 5


def test_a_master_port_held_by_a_listener_that_never_answers_ends_the_job(tmp_path):
    """Old code: 'Failed: the job hung' after 100 s (the job waited for the listener, held until then). Now rank 1 gives
    up rendezvous_failures.GRACE_S (10 s) after its connection was accepted, with one line naming the port, and the
    job ends (exit 1)."""
    require_system(
        shutil.which("mpirun") is not None and importlib.util.find_spec("mpi4py") is not None,
        "OpenMPI or mpi4py not installed: bash launch/setup.sh --test",
    )
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    env = {k: v for k, v in cpu_env().items() if k not in ("MASTER_ADDR", "RANK", "WORLD_SIZE")}
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:  # listens, accepts nothing
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        env["MASTER_PORT"] = str(port)
        start = time.monotonic()
        returncode, output = run_mpirun(
            ["-x", "MASTER_PORT", "-np", "2", sys.executable, script, tmp_path, TIMEOUT_S], env, timeout=100
        )
        took = time.monotonic() - start
    rank0, rank1 = [(tmp_path / f"rank{r}").read_text().splitlines() for r in (0, 1)]
    assert returncode == rendezvous_failures.EXIT_CODE, f"{rank0} {rank1} {output[-3000:]}"
    assert rank0 == [
        f"refused: rank 0 cannot listen for the job's rendezvous on 127.0.0.1:{port}: another process on this host "
        "holds that port (another job?). Set MASTER_PORT to a free port, or stop the other job"
    ]
    assert rank1 == [
        f"error: rank 1: the job's rendezvous port 127.0.0.1:{port} accepted the connection and did not answer within "
        "10 s: another program listens on that port (rank 0 then could not), or rank 0 hangs. Set MASTER_PORT to a "
        "free port, or stop that program, and start the job again; it resumes from its newest checkpoint"
    ]
    assert took < 80, took  # startup of both ranks plus the 10 s bound, not the listener's life
