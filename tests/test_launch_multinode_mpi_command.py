"""The mpirun command launch/multinode.sh mpi builds (DRY_RUN=1: printed, not run)."""

import pytest

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


def sigkill_timeout(words: list[str]) -> str | None:
    for i, word in enumerate(words[:-1]):
        if word == "odls_base_sigkill_timeout" and words[i - 1] == "--mca":
            return words[i + 1]
    return None


@pytest.mark.parametrize(
    ("yaml", "env", "expected"),
    [
        (None, {}, "30"),  # the YAML default, 25 s, + 5
        ("train:\n  stop_grace_s: 12.5\n", {}, "18"),
        ("model:\n  n_layer: 2\ntrain:\n  stop_grace_s: 60\n", {}, "65"),
        ("train:\n  stop_grace_s: 60\n", {"STOP_GRACE_S": "10"}, "15"),
    ],
)
def test_mpirun_waits_the_stop_grace_before_its_sigkill(tmp_path, yaml, env, expected):
    """Fault: mpirun's SIGKILL came odls_base_sigkill_timeout (Open MPI's default: 1 s) after it passed a
    SIGTERM or Ctrl-C on, in the middle of the ranks' stop save (tests/test_launch_multinode_mpi_stop.py)."""
    args = ["--out", "x"]
    if yaml is not None:
        (tmp_path / "run.yaml").write_text(yaml)
        args = ["--config", str(tmp_path / "run.yaml"), *args]
    assert sigkill_timeout(mpirun_words(tmp_path, "localhost slots=2\n", *args, **env)) == expected


def test_a_sigkill_timeout_of_the_users_own_is_kept(tmp_path):
    words = mpirun_words(tmp_path, "localhost slots=2\n", MPI_ARGS="--mca odls_base_sigkill_timeout 90")
    assert words.count("odls_base_sigkill_timeout") == 1 and sigkill_timeout(words) == "90"
    words = mpirun_words(tmp_path, "localhost slots=2\n", OMPI_MCA_odls_base_sigkill_timeout="90")
    assert sigkill_timeout(words) is None  # Open MPI reads the environment's value
