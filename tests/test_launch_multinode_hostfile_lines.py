"""launch/multinode.sh reads every line of its hostfile (DRY_RUN=1: the launcher command is printed, not run)."""

import os
import subprocess

from conftest import REPO


def dry_run(tmp_path, mode: str, hostfile_text: str) -> subprocess.CompletedProcess:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(hostfile_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "SSH_PORT", "PDSH_", "DEEPSPEED_"))}
    env.update(DRY_RUN="1", STOP_GRACE_S="25", MPI_ARGS="", PYTHON="python3")
    return subprocess.run(
        ["bash", REPO / "launch/multinode.sh", mode, hostfile, "--max-steps", "5"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_mpi_counts_the_slots_of_a_last_line_without_a_newline(tmp_path):
    """Fault: a hostfile whose last line lacks a newline (printf, some editors) lost that line: `read` fails on
    it and the loop dropped it, so mpirun was given -np 2 for two hosts of 2 slots, and a job of half the world
    size trained on the first host only without a word."""
    proc = dry_run(tmp_path, "mpi", "node-a slots=2\nnode-b slots=2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"mpirun --hostfile {tmp_path}/hostfile -np 4 --bind-to none "), proc.stdout


def test_deepspeed_meets_on_the_first_host_of_a_hostfile_without_a_final_newline(tmp_path):
    """Fault: the same lost last line left one host, which the script runs as a single-node job: rendezvous on
    127.0.0.1 and --no_ssh_check, while DeepSpeed read both hosts from the file. node-b's ranks then looked
    for rank 0 on their own loopback and waited train.dist_timeout_s."""
    proc = dry_run(tmp_path, "deepspeed", "node-a slots=2\nnode-b slots=2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        f"deepspeed --hostfile {tmp_path}/hostfile --master_addr node-a --master_port 29500 "
        f"{REPO}/launch/train.py --max-steps 5 \n"
    )


def test_a_single_line_without_a_newline_is_a_host(tmp_path):
    """Fault: a one-line hostfile without its newline was refused as listing no host."""
    proc = dry_run(tmp_path, "mpi", "node-a slots=3")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert " -np 3 " in proc.stdout


def test_a_host_listed_twice_is_refused_before_anything_starts(tmp_path):
    """Fault: a host given on two lines passed the script: DeepSpeed's runner stopped in a ValueError traceback
    ('Hostfile contains multiple entries for node-a') after every host had been probed over ssh, and mpirun
    in an ORTE 'internal error ... FORCE-TERMINATE'. Now one line names the file and the host, in both modes."""
    for mode in ("deepspeed", "mpi"):
        proc = dry_run(tmp_path, mode, "node-a slots=2\nnode-b slots=2\n# spare\nnode-a slots=2\n")
        assert (proc.returncode, proc.stdout) == (2, ""), mode
        assert proc.stderr == (
            f"error: {tmp_path}/hostfile: 'node-a' is listed twice; give each host one line with all its ranks "
            "(slots=N)\n"
        )


def test_slot_counts_with_leading_zeros_are_read_in_base_10(tmp_path):
    """Fault: bash's arithmetic read slots=010 as octal 8 (mpirun -np 8 where DeepSpeed and Open MPI read 10),
    and slots=08 as an error ('value too great for base') that ended the reading of the hostfile: this one
    gave -np 0, not 18."""
    proc = dry_run(tmp_path, "mpi", "node-a slots=08\nnode-b slots=010\n")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert " -np 18 " in proc.stdout, proc.stdout


def test_a_host_of_zero_slots_is_refused_naming_how_to_leave_it_out(tmp_path):
    """Fault: 'node-a slots=0' (to leave a node out) made node-a the rendezvous address in deepspeed mode, while
    DeepSpeed starts no rank there: the other hosts' ranks waited train.dist_timeout_s for it. mpirun stopped
    on it with 'All nodes which are allocated for this job are already filled' or a slot-count error."""
    for mode in ("deepspeed", "mpi"):
        proc = dry_run(tmp_path, mode, "node-a slots=0\nnode-b slots=2\n")
        assert (proc.returncode, proc.stdout) == (2, ""), mode
        assert proc.stderr == (
            f"error: {tmp_path}/hostfile: 'node-a' has slots=0: to leave a host out, delete or comment out its "
            'line (deepspeed mode: or DEEPSPEED_ARGS="--exclude node-a")\n'
        )
