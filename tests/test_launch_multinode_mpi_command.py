"""The mpirun command launch/multinode.sh mpi builds (DRY_RUN=1: printed, not run)."""

from conftest import REPO, cpu_env, run


def mpirun_words(tmp_path, hostfile_text: str, *args, **env_vars) -> list[str]:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(hostfile_text)
    env = cpu_env(DRY_RUN=1, **env_vars)
    for var in ("MASTER_ADDR", "STOP_GRACE_S", "MPI_ARGS", "OMPI_MCA_odls_base_sigkill_timeout"):
        if var not in env_vars:
            env.pop(var, None)
    return run(["bash", REPO / "launch/multinode.sh", "mpi", hostfile, *args], env=env).stdout.split()


def test_open_mpi_hostfile_max_slots_is_not_the_slot_count(tmp_path):
    """Fault: the slot count was read by a greedy sed, so 'nodeA slots=8 max_slots=16' (Open MPI's own
    hostfile syntax) gave 16: mpirun -np 16 on 8 GPUs, two ranks on each."""
    words = mpirun_words(tmp_path, "nodeA slots=8 max_slots=16\nnodeB max_slots=6 slots=2\n", "--out", "x")
    assert words[words.index("-np") + 1] == "10"
    (tmp_path / "only_max").write_text("nodeA max_slots=16\n")
    missing = run(["bash", REPO / "launch/multinode.sh", "mpi", tmp_path / "only_max"], env=cpu_env(), check=False)
    assert missing.returncode == 2 and "'nodeA' has no slots=N" in missing.stderr
