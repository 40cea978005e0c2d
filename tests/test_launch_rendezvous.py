"""A job whose ranks never all meet: one line naming the address, the wait and what to check.

Before, a rank whose peer crashed or was never started waited train.dist_timeout_s in torch's rendezvous and
then died in a traceback of some 20 frames: "DistStoreError: Timed out after 4 seconds waiting for clients.
1/2 clients joined" on rank 0, "DistNetworkError: The client socket has timed out after 3000ms while trying
to connect to (127.0.0.1, PORT)" on the others, and "DistNetworkError: The server socket has failed to listen
... EADDRINUSE" when another job held MASTER_PORT. Each case is one process of a 2-rank job.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from conftest import REPO, cpu_env, free_port, tiny_ngpt, tiny_train, write_run_configs

TIMEOUT_S = 3  # train.dist_timeout_s: the rendezvous's wait too

CASES = {
    "rank 0 alone": (
        0,
        "rank 0 waited 3 s (train.dist_timeout_s) on 127.0.0.1:{port} for the job's other ranks, "
        "and 1 of 2 never arrived: they crashed or were not started",
    ),
    "rank 1 alone": (
        1,
        "rank 1 could not reach rank 0's rendezvous on 127.0.0.1:{port} within 3 s "
        "(train.dist_timeout_s): rank 0 crashed or was not started",
    ),
    "port taken": (
        0,
        "rank 0 cannot listen for the job's rendezvous on 127.0.0.1:{port}: another process on "
        "this host holds that port (another job?). Set MASTER_PORT to a free port",
    ),
}


@pytest.fixture(scope="module")
def lone_ranks(tmp_path_factory, tiny_dataset) -> dict[str, tuple[int, int, str]]:
    """Each case's (port, exit status, stderr); the three processes run at once."""
    folder = tmp_path_factory.mktemp("rendezvous")
    configs = write_run_configs(folder, tiny_ngpt(), tiny_train(2, dist_timeout_s=TIMEOUT_S))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    started = {}
    for name, (rank, _) in CASES.items():
        port = taken.getsockname()[1] if name == "port taken" else free_port()
        env = cpu_env(RANK=rank, WORLD_SIZE=2, LOCAL_RANK=rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        cmd = [
            sys.executable,
            REPO / "launch/train.py",
            "--config",
            configs["yaml"],
            "--deepspeed_config",
            configs["ds"],
            "--data",
            tiny_dataset,
            "--out",
            folder / name.replace(" ", "_"),
            "--no-progress",
        ]
        started[name] = (
            port,
            subprocess.Popen(
                [str(c) for c in cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            ),
        )
    try:
        return {name: (port, proc.wait(timeout=240), proc.stderr.read()) for name, (port, proc) in started.items()}
    finally:
        taken.close()
        for _, proc in started.values():
            proc.kill()


@pytest.mark.parametrize("case", list(CASES))
def test_a_rank_whose_peers_never_meet_it_stops_with_one_line_naming_the_cause(lone_ranks, case):
    port, code, stderr = lone_ranks[case]
    expected = CASES[case][1].format(port=port)
    assert code == 1, stderr[-3000:]
    assert f"error: {expected}" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr and "DistStoreError" not in stderr, stderr[-3000:]
