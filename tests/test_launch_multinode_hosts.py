"""launch/multinode.sh deepspeed: a hostfile host that ssh cannot reach is named before anything starts.

The fault: DeepSpeed's runner checks ssh to the first host only (and not at all with --no_ssh_check).
A typo in another line of the hostfile started the reachable hosts' ranks, which waited
train.dist_timeout_s (600 s by default) for the missing ones and then failed with torch's
"Timed out ... 1/2 clients joined" traceback, which does not name the host.
"""

import socket
import subprocess

from system.harness import local_sshd, sshd_available

from conftest import REPO, cpu_env, free_port, require_system, tiny_ngpt, tiny_train, train_flags, write_run_configs


def test_unreachable_host_in_the_hostfile_is_named_before_any_rank_starts(tiny_dataset, tmp_path):
    """Fault: an unreachable hostfile host made the job wait train.dist_timeout_s, then a traceback."""
    ok, reason = sshd_available()
    require_system(ok, reason)
    configs = write_run_configs(tmp_path, tiny_ngpt(), tiny_train(20, dist_timeout_s=20))
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\nno-such-node.invalid slots=1\n")
    out = tmp_path / "run"
    with local_sshd(tmp_path / "sshd") as ssh_options:
        env = cpu_env(MASTER_PORT=free_port(), PDSH_SSH_ARGS_APPEND=ssh_options, DEEPSPEED_ARGS="--no_ssh_check")
        proc = subprocess.run(
            ["bash", REPO / "launch/multinode.sh", "deepspeed", hostfile,
             *train_flags(configs["yaml"], configs["ds"], tiny_dataset, out)],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr == (
        f"error: {hostfile}: not reachable over passwordless ssh (ssh {ssh_options} -o BatchMode=yes "
        "-o ConnectTimeout=15 HOST true): no-such-node.invalid\n"
    )
    assert proc.stdout == ""
    assert not out.exists()  # no rank was started


def test_rendezvous_port_in_use_fails_before_any_rank_starts(tiny_dataset, tmp_path):
    """Fault: a MASTER_PORT another process listens on: rank 0 died with EADDRINUSE and the second
    host's rank joined the other listener and waited there as long as it ran."""
    ok, reason = sshd_available()
    require_system(ok, reason)
    configs = write_run_configs(tmp_path, tiny_ngpt(), tiny_train(20, dist_timeout_s=10))
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")  # two names, two "nodes"
    out = tmp_path / "run"
    with local_sshd(tmp_path / "sshd") as ssh_options, socket.socket() as other_job:
        other_job.bind(("", 0))  # another job's rendezvous: listening on every address, never answering
        other_job.listen()
        port = other_job.getsockname()[1]
        env = cpu_env(MASTER_PORT=port, PDSH_SSH_ARGS_APPEND=ssh_options, DEEPSPEED_ARGS="--no_ssh_check")
        proc = subprocess.run(
            ["bash", REPO / "launch/multinode.sh", "deepspeed", hostfile,
             *train_flags(configs["yaml"], configs["ds"], tiny_dataset, out)],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr == (
        f"error: rendezvous port {port} on localhost is in use by another process; set MASTER_PORT to a free port\n"
    )
    assert proc.stdout == ""
    assert not out.exists()  # no rank was started
