"""launch/entrypoint.py hands a torchrun command over without importing torch where no port torchrun may listen on is
in use on this host; where one is, its check (torchrun's own parser, torch imported) still refuses a held port in
every spelling torchrun reads.

The fault: the entrypoint imported torch.distributed.run (torch, about 1-3 s of CPU) for every torchrun command, only
to read its port, before torchrun, which imports torch again, started."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO, cpu_env, free_port

MAIN = """
import sys
sys.path.insert(0, sys.argv[1])
import entrypoint
code = entrypoint.main(sys.argv[2:])
print("exit", code, "torch imported:", "torch" in sys.modules)
"""


def entrypoint_main(tmp_path, *argv, **env) -> subprocess.CompletedProcess:
    """entrypoint.main(argv) in a child process whose PATH finds a `torchrun` that only says it ran."""
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir(exist_ok=True)
    stub = bin_folder / "torchrun"
    stub.write_text('#!/bin/sh\necho "torchrun ran"\n')
    stub.chmod(0o755)
    child_env = cpu_env(**env)
    child_env["PATH"] = f"{bin_folder}{os.pathsep}{child_env['PATH']}"
    cmd = [sys.executable, "-c", MAIN, REPO / "launch", *argv]
    return subprocess.run(list(map(str, cmd)), env=child_env, capture_output=True, text=True, timeout=180)


def test_a_torchrun_command_on_free_ports_is_handed_over_without_importing_torch(tmp_path):
    """Old code: 'exit 0 torch imported: True' (torch.distributed.run imported to read --master_port)."""
    port = free_port()
    done = entrypoint_main(
        tmp_path, "torchrun", "--nnodes", 2, "--node_rank", 0, "--master_port", port, "train.py", "--steps", 1000
    )
    assert done.stdout.splitlines() == ["torchrun ran", "exit 0 torch imported: False"], done.stderr[-3000:]


@pytest.mark.parametrize(
    ("spelling", "env"),
    [
        (["--master_port={port}"], {}),
        (["--master-p", "{port}"], {}),  # argparse's abbreviation of --master-port
        ([], {"PET_MASTER_PORT": "{port}"}),  # torchrun's options read PET_<NAME> where not given
        (["--rdzv-endpoint=127.0.0.1:{port}"], {}),
    ],
)
def test_a_held_port_in_any_spelling_torchrun_reads_is_still_refused(tmp_path, spelling, env):
    """The shortcut must not skip a port torchrun would listen on: each spelling with the port held is refused in
    one line, exit 2, and torchrun is not started."""
    with socket.socket() as other:  # another job's listener
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        args = [arg.format(port=port) for arg in spelling]
        done = entrypoint_main(
            tmp_path,
            "torchrun",
            "--nnodes",
            2,
            "--node_rank",
            0,
            *args,
            "train.py",
            **{name: value.format(port=port) for name, value in env.items()},
        )
    option = "--rdzv_endpoint" if "endpoint" in " ".join(spelling) else "--master_port"
    assert done.stderr.splitlines() == [
        f"error: torchrun's rendezvous port {port} ({option}) is taken on this host: another job or program "
        f"holds it (listens there, or has bound it). Give torchrun a free one with {option}, or stop the other job"
    ]
    assert done.stdout.splitlines() == ["exit 2 torch imported: True"]
