"""Trainer children of the benchmark scripts: started, stopped with the script, and never two on one --out.

bench/convergence.py, bench/compile_cost.py and bench/parallel_modes.py run `launch/train.py` (or torchrun,
or themselves) as a child. With a plain subprocess.run, a SIGTERM or Ctrl-C that stopped the script left
the child training on its own (parent PID 1), and a rerun then deleted that live run's folder, its
train.lock with it, and started a second trainer on the same --out. Here:

- `run` starts the child in a session of its own (a terminal's Ctrl-C no longer reaches it directly),
  forwards SIGTERM, SIGINT and SIGHUP to the child's whole process group (torchrun and its ranks), waits
  for it to end, and then stops the script too (SystemExit 128 + the signal). A SIGKILL of the script
  cannot be forwarded: stop a bench run with SIGTERM or Ctrl-C (or kill its child's process group too).
- `remove_run_folder` deletes an old --out only while holding its train.lock, tested the trainer's own way
  (ngpt_ds.train.run_lock): a folder a live trainer holds is refused, not deleted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None):
    """subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True), stopped with this process.

    A SIGTERM, SIGINT or SIGHUP while the child runs is sent to the child's process group; once the child
    has ended (it may save or clean up first), SystemExit(128 + signal) stops the calling script, whose
    `finally` blocks and temporary folders are cleaned up as usual. Outside the main thread no handler can
    be installed, and nothing is forwarded."""
    received: list[int] = []
    started: list[subprocess.Popen] = []

    def forward(signum, _frame):
        received.append(signum)
        for proc in started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():  # before the start: no moment unforwarded
        previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(proc)
        if received:  # a signal came while it started
            os.killpg(proc.pid, received[0])
        try:
            stdout, stderr = proc.communicate()
        finally:
            if proc.poll() is None:  # an exception other than a signal (MemoryError...): leave no child behind
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        name = signal.Signals(received[0]).name
        shown = " ".join(str(c) for c in cmd[:2])
        print(f"{name}: forwarded to the child ({shown} ...), which exited {proc.returncode}; exiting", file=sys.stderr)
        raise SystemExit(128 + received[0])
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def remove_run_folder(out: Path) -> None:
    """Delete the run folder `out` (an earlier bench run's --out), holding its train.lock meanwhile.

    SystemExit when a trainer holds the lock (a bench run still training there, its script killed or
    running in another shell): deleting the folder would take that run's lock file and files away, and the
    rerun's trainer would write beside it. Nothing is deleted then. The lock is tested as the trainer tests
    it (ngpt_ds.train.run_lock): a POSIX record lock, and where the filesystem gives none, the holder the
    file names on this host that still runs."""
    from ngpt_ds.train import run_lock

    if not out.exists():
        return
    with run_lock.unless_in_use(out) as free:
        if not free:
            path = out / run_lock.LOCK_FILE
            try:
                holder = path.read_text(errors="replace").strip()[:200]
            except OSError:
                holder = ""
            raise SystemExit(
                f"error: not removing {out} to run it again: it is in use by another trainer "
                f"({holder or 'a process that has not written its name yet'}; lock file {path}). "
                "Stop that trainer (a bench run killed earlier may have left it running) or use another --out"
            )
        shutil.rmtree(out)


if __name__ == "__main__":
    from report import module_main

    sys.exit(module_main(__doc__))
