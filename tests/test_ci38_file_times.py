"""conftest.py's per-file time summary (pytest_terminal_summary): every pytest run ends with the test files that took
longest (setup + call + teardown of their tests, a module fixture's time included) and the total, under pytest-xdist's
workers too (the controller holds every worker's reports), so that each CI log shows what each file costs."""

import re
import subprocess
import sys

import pytest

from conftest import FILE_TIMES_SHOWN, REPO

SLOW = """import time
import pytest

@pytest.fixture(scope="module")
def built():
    time.sleep(0.6)  # a module fixture: the first test's setup
    yield
    time.sleep(0.2)  # its teardown, after the last test

def test_one(built):
    time.sleep(0.3)

def test_two(built):
    assert False, "a failing test's time counts too"
"""
QUICK = """import time

def test_quick():
    time.sleep(0.1)
"""
LINE = re.compile(r"^\s*(\d+\.\d\d)s (\S+)$")


def _summary(folder, *args) -> tuple[dict[str, float], str]:
    """The files the summary lists ({path: seconds}, in its order) and its total line, of a pytest run in `folder`
    with tests/conftest.py as a plugin."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest", *args, "."],
        cwd=folder,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO / "tests"), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # test_two fails
    lines = proc.stdout.splitlines()
    start = lines.index(next(line for line in lines if "slowest 2 test files (setup + call + teardown)" in line))
    listed = dict(m.groups()[::-1] for m in map(LINE.match, lines[start + 1 : start + 3]) if m)
    return {path: float(seconds) for path, seconds in listed.items()}, lines[start + 3]


@pytest.mark.parametrize("xdist", [[], ["-n", "2", "--dist", "loadfile"]], ids=["plain", "xdist"])
def test_the_run_ends_with_each_files_setup_call_and_teardown_seconds_and_the_total(tmp_path, xdist):
    (tmp_path / "test_slow.py").write_text(SLOW)
    (tmp_path / "test_quick.py").write_text(QUICK)
    files, total = _summary(tmp_path, *xdist)
    assert list(files) == ["test_slow.py", "test_quick.py"], files  # the slowest first
    assert 1.1 <= files["test_slow.py"] < 3.0, files  # 0.6 setup + 0.3 call + 0.2 teardown, and the failing test
    assert 0.1 <= files["test_quick.py"] < 1.0, files
    assert total.endswith("s in all 2 files"), total
    assert abs(float(total.split("s in all")[0]) - sum(files.values())) <= 0.02, (total, files)


def test_the_forty_slowest_files_are_listed_and_the_total_counts_every_file(tmp_path):
    sleeps = {0: 0.0, FILE_TIMES_SHOWN - 1: 0.2, FILE_TIMES_SHOWN: 0.3}  # the others 0.05 s
    for i in range(FILE_TIMES_SHOWN + 1):
        sleep = sleeps.get(i, 0.05)
        (tmp_path / f"test_f{i:02d}.py").write_text(f"import time\n\ndef test_f():\n    time.sleep({sleep})\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO / "tests"), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    start = lines.index(next(line for line in lines if f"slowest {FILE_TIMES_SHOWN} test files" in line))
    listed = [LINE.match(line) for line in lines[start + 1 : start + 1 + FILE_TIMES_SHOWN]]
    assert all(listed), lines[start:]
    assert [m.group(2) for m in listed[:2]] == ["test_f40.py", "test_f39.py"], lines[start:]  # the slowest first
    assert "test_f00.py" not in proc.stdout  # the 41st, the quickest, is left off the list
    assert lines[start + 1 + FILE_TIMES_SHOWN].endswith(f"s in all {FILE_TIMES_SHOWN + 1} files")
