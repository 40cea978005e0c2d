"""The memory check counts the memory.max of the cgroups above this process's, not only its own.

The fault (red29, session 29): saved_weights._cgroup_headroom read memory.max of this process's own cgroup only.
Slurm (cgroup v2) limits the job's and the step's cgroups and runs the process in a task cgroup below them whose
memory.max is 'max': the check saw no limit, and a load 3 times the job's limit went ahead to the OOM killer.
The least headroom of every cgroup from the process's up to (not including) the root counts now.
"""

import pytest

from ngpt_ds.model import saved_weights

GIB = 2**30


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """A cgroup v2 tree as Slurm makes it, with this process in job_7/step_0/user/task_0."""
    (tmp_path / "proc_cgroup").write_text("0::/system.slice/slurmstepd.scope/job_7/step_0/user/task_0\n")
    root = tmp_path / "root"
    task = root / "system.slice/slurmstepd.scope/job_7/step_0/user/task_0"
    task.mkdir(parents=True)
    for level, limit, current in [
        ("system.slice", "max", 40 * GIB),
        ("system.slice/slurmstepd.scope", "max", 40 * GIB),
        ("system.slice/slurmstepd.scope/job_7", 16 * GIB, 12 * GIB),
        ("system.slice/slurmstepd.scope/job_7/step_0", 20 * GIB, 12 * GIB),
        ("system.slice/slurmstepd.scope/job_7/step_0/user", "max", 12 * GIB),
        ("system.slice/slurmstepd.scope/job_7/step_0/user/task_0", "max", 12 * GIB),
    ]:
        (root / level / "memory.max").write_text(f"{limit}\n")
        (root / level / "memory.current").write_text(f"{current}\n")
        (root / level / "memory.stat").write_text(f"anon {current}\nactive_file 0\ninactive_file 0\n")
    (root / "memory.stat").write_text("anon 1\n")  # the root cgroup: no memory.max, no memory.current
    monkeypatch.setattr(saved_weights, "_PROC_CGROUP", str(tmp_path / "proc_cgroup"))
    monkeypatch.setattr(saved_weights, "_CGROUP_ROOT", str(root))
    return root


def test_the_jobs_limit_above_an_unlimited_task_cgroup_counts(slurm):
    assert saved_weights._cgroup_headroom() == 4 * GIB  # old code: None (task_0's memory.max is 'max')


def test_a_level_that_cannot_be_read_is_passed_over(slurm):
    (slurm / "system.slice/slurmstepd.scope/job_7/memory.current").unlink()
    assert saved_weights._cgroup_headroom() == 8 * GIB  # the step's 20 - 12


def test_no_limit_anywhere_gives_no_headroom(slurm):
    for level in ("job_7", "job_7/step_0"):
        (slurm / "system.slice/slurmstepd.scope" / level / "memory.max").write_text("max\n")
    assert saved_weights._cgroup_headroom() is None


def test_a_containers_limit_at_the_root_of_its_cgroup_namespace_counts(tmp_path, monkeypatch):
    """In a container with its own cgroup namespace, /proc/self/cgroup reads '0::/' and the container's limit is
    in memory.max at the root of its /sys/fs/cgroup (the old code read it there too)."""
    (tmp_path / "proc_cgroup").write_text("0::/\n")
    (tmp_path / "memory.max").write_text(f"{8 * GIB}\n")
    (tmp_path / "memory.current").write_text(f"{3 * GIB}\n")
    (tmp_path / "memory.stat").write_text(f"anon {2 * GIB}\nactive_file {GIB}\ninactive_file 0\n")
    monkeypatch.setattr(saved_weights, "_PROC_CGROUP", str(tmp_path / "proc_cgroup"))
    monkeypatch.setattr(saved_weights, "_CGROUP_ROOT", str(tmp_path))
    assert saved_weights._cgroup_headroom() == 6 * GIB
