"""conftest.shared_folder: a folder made once per pytest run for all its xdist workers (the reference runs, the
traced universal resume), and the reference runs each test module gets a private copy of."""

import fcntl
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, cpu_env, read_metrics, shared_key, shared_root

# One xdist worker's call: shared_folder with a make that writes which worker made the folder.
WORKER = """
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from conftest import shared_folder

class Factory:
    def getbasetemp(self):
        return Path(sys.argv[1])

def make(folder):
    (folder / "made_by").write_text(os.environ["PYTEST_XDIST_WORKER"])

print("folder", shared_folder(Factory(), {"run": "shared"}, make), flush=True)
"""


def blocked_on_flock(pids: set[int]) -> set[int]:
    """Which of `pids` wait for an flock now (/proc/locks: a waiter's line holds '->' before its lock)."""
    waiting = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "->" and fields[2] == "FLOCK":
            waiting.add(int(fields[5]))
    return waiting & pids


def test_two_xdist_workers_asking_at_once_share_one_make(tmp_path):
    """Both workers (their base temporary folders inside one run's) call shared_folder for the same arguments while
    the folder's lock is held, so both wait on it at once: one makes the folder, the other finds it made."""
    run = tmp_path / "run"
    root = run / "shared_runs"
    root.mkdir(parents=True)
    _, key = shared_key({"run": "shared"})
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        procs = []
        for worker in ("gw0", "gw1"):
            (run / f"popen-{worker}").mkdir()
            cmd = [sys.executable, "-c", WORKER, str(run / f"popen-{worker}"), str(REPO / "tests")]
            env = cpu_env(PYTEST_XDIST_WORKER=worker)
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
        pids = {proc.pid for proc in procs}
        deadline = time.monotonic() + 120  # a hang guard only
        while blocked_on_flock(pids) != pids:
            assert all(proc.poll() is None for proc in procs), [proc.communicate()[1][-2000:] for proc in procs]
            assert time.monotonic() < deadline, "the two workers never both waited on the folder's lock"
            time.sleep(0.05)
    outs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert [out for out, _ in outs] == [f"folder {root / key}\n"] * 2
    made = (root / "made.log").read_text().splitlines()
    assert len(made) == 1 and made[0].split()[0] == key, made
    assert (root / key / "made_by").read_text() == made[0].split()[1]
    assert (root / key / "DONE").is_file()


def test_a_module_reads_its_own_copy_of_the_reference_run_made_once(reference_runs, tmp_path_factory):
    """The run was trained once this pytest run (made.log), whichever worker or module asked first; this module's
    copy holds the same records, and what a test writes in it does not reach the shared run."""
    mine = reference_runs["z0_ws1"]
    root = shared_root(tmp_path_factory)
    _, key = shared_key({**reference_runs._arguments, "reference_runs": "z0_ws1"})
    made = [line.split()[0] for line in (root / "made.log").read_text().splitlines()]
    assert made.count(key) == 1, made
    shared = root / key / "z0_ws1"
    assert mine != shared
    assert read_metrics(mine) == read_metrics(shared)
    assert [m["step"] for m in read_metrics(mine)] == list(range(1, 21))
    (mine / "metrics.jsonl").write_text("")
    assert len(read_metrics(shared)) == 20
