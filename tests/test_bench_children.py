"""bench/children.py: a benchmark script's trainer child stops with the script, and a rerun never deletes the
folder of a trainer still running."""

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

SHAPE = {"n_layer": 2, "n_embd": 32, "n_head": 2, "seq_len": 32, "vocab_size": 512}


def _gone(pid: int) -> bool:
    """No such process, or a zombie (exited; only its parent's wait is missing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_killed_convergence_script_stops_its_trainer_child(tmp_path):
    """Fault: bench/convergence.py ran the trainer with subprocess.run; a SIGTERM to the script (or a kill of
    its job) ended the script alone and the trainer went on training, its parent PID 1. Here the 'trainer' is
    a stand-in interpreter that writes its PID and sleeps; after the SIGTERM the script exits 128 + 15 and the
    stand-in is gone."""
    pid_file = tmp_path / "child.pid"
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/bin/sh\necho $$ > "$CHILD_PID_FILE"\nexec sleep 120\n')
    fake_python.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    script = textwrap.dedent(
        f"""
        import argparse, sys
        sys.path.insert(0, {str(REPO / "bench")!r})
        import convergence
        sys.executable = {str(fake_python)!r}  # convergence starts the trainer as [sys.executable, train.py, ...]
        args = argparse.Namespace(steps=2, gpt_warmup=None, eval_interval=1, eval_batches=1, ranks=1)
        convergence.run_one(args, "ngpt", 3e-3, {SHAPE!r}, 4, {str(REPO / "ds_configs/zero2.json")!r},
                            {str(data)!r}, __import__("pathlib").Path({str(tmp_path / "runs" / "ngpt")!r}))
        """
    )
    env = dict(os.environ, CHILD_PID_FILE=str(pid_file), PYTHONPATH=str(REPO))
    parent = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
    child = None
    try:
        assert _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 60), "the child never started"
        child = int(pid_file.read_text())
        parent.send_signal(signal.SIGTERM)
        rc = parent.wait(timeout=30)
        stderr = parent.stderr.read()
        assert _wait_for(lambda: _gone(child), 10), f"trainer child {child} still runs after its script ended"
        assert rc == 128 + signal.SIGTERM, stderr
        assert (
            f"SIGTERM: forwarded to the child ({fake_python} {REPO / 'launch/train.py'} ...), which exited " in stderr
        )
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child is not None and not _gone(child):
            os.kill(child, signal.SIGKILL)


def test_children_run_returns_what_subprocess_run_would(tmp_path):
    import children

    proc = children.run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"])
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back


def test_convergence_rerun_refuses_to_delete_the_folder_of_a_running_trainer(tmp_path, monkeypatch):
    """Fault: a rerun of bench/convergence.py removed an earlier run's --out with shutil.rmtree whatever held
    it; with that run's trainer still going (its script killed), its train.lock went too and a second trainer
    started on the same --out. A held train.lock now stops the rerun, and nothing is deleted."""
    import convergence

    run_dir = tmp_path / "runs" / "ngpt_lr0.003"
    out = run_dir / "out"
    out.mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 1}\n')  # a run cut short: no summary.json, so it is rerun
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, socket, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, f'host={socket.gethostname()} pid={os.getpid()}'.encode())\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n",
            str(out / "train.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        calls: list = []
        monkeypatch.setattr(convergence.children, "run", lambda cmd, **kw: calls.append(cmd))
        data = tmp_path / "data"
        data.mkdir()
        args = argparse.Namespace(steps=2, gpt_warmup=None, eval_interval=1, eval_batches=1, ranks=1)
        with pytest.raises(SystemExit) as stopped:
            convergence.run_one(args, "ngpt", 3e-3, SHAPE, 4, str(REPO / "ds_configs/zero2.json"), str(data), run_dir)
        assert f"not removing {out} to run it again" in str(stopped.value)
        assert "in use by another trainer" in str(stopped.value) and f"pid={holder.pid}" in str(stopped.value)
        assert calls == []
        assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n' and (out / "train.lock").exists()
    finally:
        holder.kill()
        holder.wait()
    # once the trainer is gone the folder is removed and the run starts
    failed = subprocess.CompletedProcess([], 1, "", "")
    monkeypatch.setattr(convergence.children, "run", lambda cmd, **kw: calls.append(cmd) or failed)
    with pytest.raises(SystemExit, match="failed"):
        convergence.run_one(args, "ngpt", 3e-3, SHAPE, 4, str(REPO / "ds_configs/zero2.json"), str(data), run_dir)
    assert len(calls) == 1 and not out.exists()
