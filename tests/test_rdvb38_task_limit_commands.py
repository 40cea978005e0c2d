"""ngpt-export, ngpt-generate, ngpt-evaluate and ngpt-prepare under a low `ulimit -u` (RLIMIT_NPROC: every process and
thread of the user counts) say one line naming the limit and the fix, exit 2.

The fault: ngpt_ds.limits.limit_failure named a thread that could not start under `ulimit -v` or a large `ulimit -s`
only, and returned None under `ulimit -u`: each command ended on a traceback ending in "RuntimeError: can't start new
thread", exit 1 (the pool that hashes a checkpoint's files; datasets' threads for ngpt-prepare). A training rank's
rendezvous already said it (rendezvous_peers.thread_limit_line, d3dc2f3): the check is now limits.task_limit, used by
both. One command per test, under the real limit, with the real user id of `nobody` (the limit binds no process of
root's) and root's effective id to read and write the test's folders, without CAP_SYS_ADMIN and CAP_SYS_RESOURCE."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from nobody_user import NOBODY, nobody_with

from conftest import cpu_env, nobody_alone, tiny_ngpt, tiny_train, train_run, write_run_configs

ROOT = Path(__file__).resolve().parents[1]
HARD = resource.getrlimit(resource.RLIMIT_NPROC)[1]
TASKS = 1
"""The limit: the command's main thread and no other."""


@pytest.fixture(autouse=True)
def _nobody_alone():
    """Every test here runs a process as `nobody` under a `ulimit -u` of 1 or 2, which a process of `nobody` of
    another test file counts against (conftest.nobody_alone): they take turns."""
    with nobody_alone():
        yield


def _limited(cmd: list, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=cpu_env(OPENBLAS_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=nobody_with(TASKS),
        check=False,
    )


def _fix(command: str) -> tuple[str, str]:
    uid = NOBODY if os.geteuid() == 0 else os.getuid()
    said = f"its user (uid {uid}) may run {TASKS} processes and threads in all (`ulimit -u`), and runs "
    where = f"in the shell or job script before {command}"
    if HARD == resource.RLIM_INFINITY:
        fix = f"Raise it (`ulimit -u unlimited` {where}), and run it again"
    else:
        fix = f"Raise it, up to its hard limit of {HARD} (`ulimit -u {HARD}` {where}), and run it again"
    return said, f" now. {fix}"


def _check(run: subprocess.CompletedProcess[str], started: str, command: str) -> None:
    """Old code: exit 1 and the traceback's last line "RuntimeError: can't start new thread"."""
    last = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ""
    said, fix = _fix(command)
    assert (run.returncode, "Traceback" in run.stderr) == (2, False), run.stderr[-3000:]
    assert last.startswith(f"error: this process could not start a thread ({started}): {said}"), last
    assert last.endswith(fix), last


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset) -> dict:
    """A finished 2-step run (one checkpoint)."""
    root = tmp_path_factory.mktemp("rdvb38")
    files = write_run_configs(root, tiny_ngpt(), tiny_train(2))
    train_run(files["yaml"], files["ds"], tiny_dataset, root / "run")
    return {"run": root / "run"}


HASHED = "a checkpoint's files are hashed by a pool of threads"


@pytest.mark.parametrize(
    "command, argv",
    [
        ("export", ["--out", "exported"]),
        ("generate", ["--prompt", "a", "--max-new-tokens", "2"]),
        ("evaluate", []),
    ],
)
def test_a_model_command_under_a_low_ulimit_u_is_one_line(trained, tmp_path, command, argv):
    run = _limited([sys.executable, "-m", f"ngpt_ds.cli.{command}", trained["run"], *argv], tmp_path)
    _check(run, HASHED, f"ngpt-{command}")
    assert not (tmp_path / "exported").exists() and run.stdout == ""


def test_prepare_under_a_low_ulimit_u_is_one_line(tmp_path):
    (tmp_path / "a.txt").write_text("one two three\n\nfour five six\n\n" * 50, encoding="utf-8")
    cmd = [sys.executable, ROOT / "launch" / "prepare_data.py", "--input", "a.txt", "--out", "out"]
    run = _limited([*cmd, "--vocab-size", "300"], tmp_path)
    _check(run, "datasets reads a corpus with threads", "ngpt-prepare")
    assert not (tmp_path / "out").exists()
