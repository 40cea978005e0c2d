"""An odd /proc/meminfo never makes the memory check refuse a load that fits, nor raise.

The fault (red29, session 29): saved_weights._proc_number took the second field of the MemAvailable line as kB
whatever it was: a negative number (as a container's stand-in /proc/meminfo may show) counted as that many bytes
available, so every load was refused ('needs about 0.00 GiB of RAM, and -0.00 GiB is available'); another unit was
multiplied by 1024 all the same; a non-ASCII byte anywhere in the file lost every figure of it. Such a line is now
no figure, and the other lines and limits still count.
"""

import pytest

from ngpt_ds.model import saved_weights


@pytest.fixture
def meminfo(tmp_path, monkeypatch):
    path = tmp_path / "meminfo"
    monkeypatch.setattr(saved_weights, "_PROC_MEMINFO", str(path), raising=False)
    monkeypatch.setattr(saved_weights, "_cgroup_headroom", lambda: None)  # the machine's cgroup left out
    return path


def _available(meminfo, line: bytes) -> int | None:
    meminfo.write_bytes(b"MemTotal:       16000000 kB\nMemFree:         1000000 kB\n" + line + b"Cached: 1 kB\n")
    assert saved_weights._proc_number(str(meminfo), "MemTotal") == 16000000 * 1024
    return saved_weights._proc_number(str(meminfo), "MemAvailable")


@pytest.mark.parametrize(
    "line",
    [
        b"MemAvailable:        -1 kB\n",
        b"MemAvailable:  12000 MB\n",
        b"MemAvailable:  12000\n",
        b"MemAvailable: \xff kB\n",
    ],
    ids=["negative", "MB", "no unit", "not ascii"],
)
def test_an_odd_mem_available_is_no_figure(meminfo, line):
    assert _available(meminfo, line) is None


def test_a_plain_mem_available_is_read_in_kib(meminfo):
    assert _available(meminfo, b"MemAvailable:   12000000 kB\n") == 12000000 * 1024


def test_the_check_passes_a_small_load_whatever_the_meminfo_says(meminfo):
    meminfo.write_bytes(b"MemAvailable:        -1 kB\n")
    saved_weights.check_host_memory(1 << 20, "x", "a 1 MiB load", "fix")  # old code: NgptConfigError
