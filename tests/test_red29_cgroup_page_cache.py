"""The memory check counts a cgroup's page cache as free: the kernel drops it to make room under memory.max.

The fault (red29, session 29): saved_weights._cgroup_headroom gave memory.max - memory.current, and memory.current
counts the files the cgroup read (a dataset, the checkpoint itself). A Slurm job under a 16 GiB limit that had read
15 GiB of files was told '1.00 GiB is available' and refused a 4 GiB load that fits: the kernel reclaims that page
cache first. /proc/meminfo's MemAvailable counts it in; the cgroup headroom now does too (active_file +
inactive_file of memory.stat; tmpfs, which cannot be dropped, is not in them).

The cgroup is a folder made here with the files cgroup v2 shows (this machine may have none, or v1).
"""

import pytest

from ngpt_ds.model import saved_weights

GIB = 2**30


@pytest.fixture
def cgroup(tmp_path, monkeypatch):
    """A cgroup v2 tree with this process in /job_1/step_0 (as /proc/self/cgroup names it)."""
    (tmp_path / "proc_cgroup").write_text("0::/job_1/step_0\n")
    folder = tmp_path / "root" / "job_1" / "step_0"
    folder.mkdir(parents=True)
    monkeypatch.setattr(saved_weights, "_PROC_CGROUP", str(tmp_path / "proc_cgroup"), raising=False)
    monkeypatch.setattr(saved_weights, "_CGROUP_ROOT", str(tmp_path / "root"), raising=False)
    return folder


def _stat(anon: int, active_file: int, inactive_file: int, shmem: int) -> str:
    return (
        f"anon {anon}\nfile {active_file + inactive_file + shmem}\nkernel 4096\nshmem {shmem}\n"
        f"active_anon {anon + shmem}\ninactive_anon 0\nactive_file {active_file}\ninactive_file {inactive_file}\n"
    )


def test_the_page_cache_of_a_limited_cgroup_counts_as_available(cgroup):
    (cgroup / "memory.max").write_text(f"{16 * GIB}\n")
    (cgroup / "memory.current").write_text(f"{15 * GIB}\n")
    (cgroup / "memory.stat").write_text(_stat(anon=GIB, active_file=5 * GIB, inactive_file=9 * GIB, shmem=0))
    assert saved_weights._cgroup_headroom() == 15 * GIB  # old code: 1 GiB


def test_tmpfs_in_the_cgroup_is_not_counted_as_reclaimable(cgroup):
    (cgroup / "memory.max").write_text(f"{16 * GIB}\n")
    (cgroup / "memory.current").write_text(f"{15 * GIB}\n")
    (cgroup / "memory.stat").write_text(_stat(anon=GIB, active_file=GIB, inactive_file=GIB, shmem=12 * GIB))
    assert saved_weights._cgroup_headroom() == 3 * GIB


@pytest.mark.parametrize(
    "stat",
    [None, "active_file x\n", "garbage", ""],
    ids=["no memory.stat", "unparsable", "no fields", "empty"],
)
def test_an_unreadable_memory_stat_leaves_the_headroom_under_the_limit(cgroup, stat):
    (cgroup / "memory.max").write_text(f"{16 * GIB}\n")
    (cgroup / "memory.current").write_text(f"{15 * GIB}\n")
    if stat is not None:
        (cgroup / "memory.stat").write_text(stat)
    assert saved_weights._cgroup_headroom() == GIB


def test_an_unlimited_cgroup_gives_no_headroom(cgroup):
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text(f"{15 * GIB}\n")
    assert saved_weights._cgroup_headroom() is None
