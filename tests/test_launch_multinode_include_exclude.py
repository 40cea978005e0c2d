"""launch/multinode.sh deepspeed follows DeepSpeed's --include / --exclude / --num_nodes in DEEPSPEED_ARGS:
the rendezvous is on the first host that starts ranks, and only those hosts are probed over ssh. Run
here against a fake `ssh` (node-a, the broken node, does not answer) and a fake `deepspeed` on PATH.

The fault: the script took the hostfile's first host as --master_addr and probed every host of the
hostfile. `DEEPSPEED_ARGS="--exclude node-a"`, the way to leave a broken node out of a run, was
refused ("not reachable over passwordless ssh ...: node-a"); with node-a reachable (a bad GPU, say),
the ranks on the other hosts waited train.dist_timeout_s (600 s by default) for a rendezvous on
node-a, where no rank runs, and failed. With --include naming one host, the rendezvous was node-a
too, though DeepSpeed starts that host's ranks on this machine.
"""

import os
import subprocess

import pytest

from conftest import REPO, stand_in_commands

FAKE_SSH = """#!/bin/bash
echo "ssh ${@: -2:1}" >> "$FAKE_LOG"
[ "${@: -2:1}" = node-a ] && exit 255
exit 0
"""

FAKE_DEEPSPEED = """#!/bin/bash
echo "deepspeed $*" >> "$FAKE_LOG"
"""


def run_multinode(tmp_path, deepspeed_args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    folder = stand_in_commands(tmp_path / "bin", {"ssh": FAKE_SSH, "deepspeed": FAKE_DEEPSPEED})
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=2\nnode-b slots=2\nnode-c slots=2\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "SSH_PORT", "PDSH_"))}
    env.update(PATH=f"{folder}:{env['PATH']}", FAKE_LOG=str(tmp_path / "fake.log"), DEEPSPEED_ARGS=deepspeed_args)
    env["MASTER_PORT"] = "29517"
    proc = subprocess.run(
        ["bash", str(REPO / "launch/multinode.sh"), "deepspeed", str(hostfile), "--out", "/shared/run"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    log = tmp_path / "fake.log"
    return proc, sorted(log.read_text().splitlines()) if log.exists() else []


@pytest.mark.parametrize(
    ("deepspeed_args", "master", "probed"),
    [
        ("--exclude node-a", "node-b", ["node-b", "node-c"]),
        ("--exclude=node-a@node-c", "127.0.0.1", []),  # one host left: DeepSpeed starts it locally
        ("-i node-b@node-c:0,1", "node-b", ["node-b", "node-c"]),
        ("--include node-c", "127.0.0.1", []),
        ("--num_nodes 1", "127.0.0.1", []),
        ("--exclude node-a:0", "node-a", None),  # node-a keeps slot 1: it starts rank 0 still
    ],
)
def test_excluded_or_not_included_host_is_neither_master_nor_probed(deepspeed_args, master, probed, tmp_path):
    """Fault: DEEPSPEED_ARGS="--exclude node-a" (a broken first node) was refused for node-a's ssh, or
    made node-a the rendezvous, where no rank runs: the job waited train.dist_timeout_s and failed."""
    proc, calls = run_multinode(tmp_path, deepspeed_args)
    if probed is None:  # node-a stays in the run and does not answer ssh: refused, named
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        assert proc.stderr.endswith("HOST true): node-a\n"), proc.stderr
        assert calls == ["ssh node-a", "ssh node-b", "ssh node-c"]
        return
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert calls == sorted(
        [f"ssh {h}" for h in probed]
        + [
            f"deepspeed --hostfile {tmp_path / 'hostfile'} --master_addr {master} --master_port 29517 "
            + ("--no_ssh_check " if not probed else "")
            + f"{deepspeed_args} {REPO / 'launch/train.py'} --out /shared/run"
        ]
    )
