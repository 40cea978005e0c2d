"""The memory check counts a cgroup v1 memory limit too (memory.limit_in_bytes), not only cgroup v2's memory.max.

The fault (red29, session 29): saved_weights._cgroup_headroom read the cgroup v2 line of /proc/self/cgroup ('0::')
only. A machine on cgroup v1 (or hybrid: its '0::' hierarchy has no memory controller) showed no limit at all, so
a load far over a job's 16 GiB limit went on to the OOM killer without a word. Now the memory controller's line of
v1 ('N:memory:/path') counts, by the same rule as v2: the least of limit - use + page cache over the cgroup and
those above it, v1's 'no limit' (9223372036854771712) being none.
"""

import pytest

from ngpt_ds.model import saved_weights

GIB = 2**30
UNLIMITED = 9223372036854771712  # what memory.limit_in_bytes reads with no limit set


@pytest.fixture
def v1(tmp_path, monkeypatch):
    """A hybrid machine's /proc/self/cgroup (v2 without the memory controller, v1 memory at /slurm/uid_0/job_7/step_0)
    and a v1 memory hierarchy with the job limited to 16 GiB."""
    (tmp_path / "proc_cgroup").write_text(
        "9:name=systemd:/slurm/uid_0/job_7/step_0\n4:memory:/slurm/uid_0/job_7/step_0\n1:cpu,cpuacct:/\n0::/\n"
    )
    memory = tmp_path / "memory"
    for level, limit, usage, active, inactive in [
        ("", UNLIMITED, 40 * GIB, 0, 0),
        ("slurm", UNLIMITED, 40 * GIB, 0, 0),
        ("slurm/uid_0", UNLIMITED, 15 * GIB, 5 * GIB, 9 * GIB),
        ("slurm/uid_0/job_7", 16 * GIB, 15 * GIB, 5 * GIB, 9 * GIB),
        ("slurm/uid_0/job_7/step_0", UNLIMITED, 15 * GIB, 5 * GIB, 9 * GIB),
    ]:
        (memory / level).mkdir(parents=True, exist_ok=True)
        (memory / level / "memory.limit_in_bytes").write_text(f"{limit}\n")
        (memory / level / "memory.usage_in_bytes").write_text(f"{usage}\n")
        (memory / level / "memory.stat").write_text(
            f"cache {active + inactive}\nrss {GIB}\nactive_file 4096\ninactive_file 4096\n"
            f"hierarchical_memory_limit {limit}\ntotal_cache {active + inactive}\ntotal_rss {GIB}\n"
            f"total_active_file {active}\ntotal_inactive_file {inactive}\n"
        )
    v2 = tmp_path / "unified"  # the v2 hierarchy of a hybrid machine: no memory controller files
    v2.mkdir()
    (v2 / "cgroup.procs").write_text("1\n")
    monkeypatch.setattr(saved_weights, "_PROC_CGROUP", str(tmp_path / "proc_cgroup"))
    monkeypatch.setattr(saved_weights, "_CGROUP_ROOT", str(v2))
    monkeypatch.setattr(saved_weights, "_CGROUP_V1_ROOT", str(memory), raising=False)
    return memory


def test_a_v1_jobs_limit_counts_with_its_page_cache(v1):
    assert saved_weights._cgroup_headroom() == 15 * GIB  # 16 - 15 + 14 of page cache; old code: None


def test_a_v1_limit_without_page_cache_counts_as_it_is(v1):
    (v1 / "slurm/uid_0/job_7/memory.stat").write_text("total_rss 1\n")
    assert saved_weights._cgroup_headroom() == GIB


def test_v1_with_no_limit_anywhere_gives_no_headroom(v1):
    (v1 / "slurm/uid_0/job_7/memory.limit_in_bytes").write_text(f"{UNLIMITED}\n")
    assert saved_weights._cgroup_headroom() is None


@pytest.mark.parametrize("limit", ["", "-1", "lots", "16G"])
def test_an_odd_v1_limit_is_no_limit_not_a_crash(v1, limit):
    (v1 / "slurm/uid_0/job_7/memory.limit_in_bytes").write_text(limit)
    assert saved_weights._cgroup_headroom() is None
