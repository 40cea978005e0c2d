"""Helpers of the stop tests (tests/test_launch_stop_*.py):
start a 2-rank job under a launcher, wait for its steps, stop it, and check that nothing of it is left
running or holding its port. The two files share one chain of checkpoints (STOP_CHAIN)."""

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from conftest import REPO, cpu_env, free_port, read_metrics, train_flags

HANG_GUARD_S = 240  # a hang guard only: a job that never stops fails here instead of blocking the suite

STOP_CHAIN = {"dir": None, "step": 0}
"""The run folder and step of the last stop that left a verified checkpoint (the stop tests' chain)."""


def stop_train_args(configs, data, out, yaml="yaml") -> list:
    """launch/train.py, relative to the repository (the launchers start it there), and its options."""
    return ["launch/train.py", *train_flags(configs[yaml], configs["ds"], data, out)]


def start_from_chain(out: Path) -> int:
    """Copy the run folder of the last stop into `out` (not its lock); the step to resume from, or 0."""
    if STOP_CHAIN["dir"] is None:
        return 0
    shutil.copytree(STOP_CHAIN["dir"], out, ignore=shutil.ignore_patterns("train.lock"))
    return STOP_CHAIN["step"]


def losses_by_step(out) -> dict[int, float]:
    """step -> train loss of the run folder (a replayed step keeps its last value)."""
    if not (out / "metrics.jsonl").exists():
        return {}
    return {m["step"]: m["train/loss"] for m in read_metrics(out)}


class StepWatch:
    """The last step a run folder's metrics.jsonl records, for a loop that polls it: the file is parsed again only
    when its size has changed (a poll every 50 ms parsed all of it each time, some hundred JSON lines, through the
    whole startup of the job it waits for)."""

    def __init__(self, out: Path):
        self.out, self.step, self._size = out, 0, None

    def last_step(self) -> int:
        try:
            size = (self.out / "metrics.jsonl").stat().st_size  # before the read: a line added during it comes next
        except FileNotFoundError:
            size = None
        if size != self._size:
            self._size = size
            self.step = max(losses_by_step(self.out), default=0)
        return self.step


def trainer_processes(out) -> list[psutil.Process]:
    """The live trainer ranks (and launchers) of one run folder, found by its unique --out."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if str(out) in cmdline and "launch/train.py" in " ".join(cmdline) and proc.info["status"] != "zombie":
            found.append(proc)
    return found


def wait_until_gone(out, known: list[psutil.Process]) -> None:
    """Until every trainer process of the run has ended, by pid: an exiting process loses its
    command line (its memory is unmapped) before it closes its sockets, so the command line alone
    would let the port check below race with the exit of an orphaned rank."""
    seen = {*known, *trainer_processes(out)}
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        seen |= set(trainer_processes(out))
        left = [p for p in seen if still_running(p)]
        if not left:
            return
        if time.monotonic() > deadline:
            for proc in left:
                proc.kill()
            pytest.fail(f"trainer processes still running {HANG_GUARD_S} s after the stop: {[p.pid for p in left]}")
        time.sleep(0.1)


def still_running(proc: psutil.Process) -> bool:
    """Whether the process runs (a zombie has ended)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_leftovers(out, launcher: subprocess.Popen) -> None:
    """After a stop test, pass or fail: kill what is left of the run, so that nothing outlives the test."""
    for left in trainer_processes(out):
        left.kill()
    if launcher.poll() is None:
        launcher.kill()
        launcher.wait()


def rendezvous_port() -> int:
    """A free port below the ephemeral range (32768 and up on Linux), so that after the job no
    other process on this busy machine gets it by chance and the check below means something:
    tests/launching.py free_port, which also keeps the pytest-xdist workers' ports apart and never
    gives one twice (a draw of its own here could give another test's job its port)."""
    return free_port()


def sockets_on(port: int) -> str:
    """What holds a port, for the failure message."""
    if not shutil.which("ss"):
        return f"port {port} in use"
    lines = subprocess.run(["ss", "-tanp"], capture_output=True, text=True, timeout=30).stdout.splitlines()
    return "\n".join(line for line in lines if f":{port} " in line)


def port_released(port: int, within_s: float = 10.0) -> bool:
    """Whether the port becomes free within a few seconds of the last trainer process's exit. A rank
    that ended with os._exit (launch/train.py's exit_process) shows as a zombie as soon as its main
    thread is gone, while its other threads may still hold the store's socket for some milliseconds."""
    deadline = time.monotonic() + within_s
    while not port_is_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def port_is_free(port: int) -> bool:
    """What the next job's rendezvous store needs: a listening socket on the port (SO_REUSEADDR, as
    torch's store sets it, so closed connections in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def wait_for_steps(out, after: int, launcher: subprocess.Popen, log: Path) -> None:
    """Until the run has logged 3 steps past `after` (the launcher still running)."""
    deadline, steps = time.monotonic() + HANG_GUARD_S, StepWatch(out)
    while steps.last_step() < after + 3:
        assert launcher.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"no step past {after + 3} logged: " + log.read_text()[-4000:]
        time.sleep(0.05)


def signal_when(
    cmd: list, ready: Callable[[subprocess.Popen], bool], sig: signal.Signals, stdout: Path, stderr: Path | None = None
) -> int:
    """Start `cmd` (its output in `stdout`, its errors in `stderr` or with the output), send it `sig` once
    `ready(process)` holds, and return its exit status. A process that ends before `ready()`, or takes longer
    than HANG_GUARD_S to get there or to stop, fails the test; it is killed either way. SIGINT is not
    inherited as ignored, as in a terminal (`_sigint_as_in_a_terminal`)."""
    with open(stdout, "w") as out, open(stderr, "w") if stderr is not None else contextlib.nullcontext() as err:
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            env=cpu_env(),
            cwd=REPO,
            stdout=out,
            stderr=err or subprocess.STDOUT,
            preexec_fn=_sigint_as_in_a_terminal,
        )
    errors = stderr or stdout
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not ready(proc):
            assert proc.poll() is None and time.monotonic() < deadline, errors.read_text()[-4000:]
            time.sleep(0.01)
        proc.send_signal(sig)
        return proc.wait(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def signal_one_trainer(
    configs, data, out, log: Path, ready: Callable[[subprocess.Popen], bool], sig: signal.Signals
) -> int:
    """`signal_when` for one trainer process, as `python launch/train.py` with no launcher (its output in `log`)."""
    return signal_when([sys.executable, *stop_train_args(configs, data, out)], ready, sig, log)


def launch_stoppable(how: str, configs, data, out, port: int, log: Path) -> subprocess.Popen:
    """Start a 2-rank job under `how` (deepspeed, torchrun, or the Docker entrypoint over deepspeed)
    in a session of its own, its output in `log`."""
    args = [str(a) for a in stop_train_args(configs, data, out)]
    deepspeed_cmd = [shutil.which("deepspeed"), "--num_gpus", "2", "--master_port", str(port), *args]
    cmd = {
        "deepspeed": deepspeed_cmd,
        "torchrun": [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            *args,
        ],
        # The image's ENTRYPOINT, run here as the parent of its default command (README "Docker").
        "entrypoint": [sys.executable, "launch/entrypoint.py", *deepspeed_cmd],
    }[how]
    # Its own session: "group" signals the launcher's process group, never pytest's.
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=cpu_env(),
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_sigint_as_in_a_terminal,
    )


def _sigint_as_in_a_terminal() -> None:
    """Undo an inherited 'ignore SIGINT'. A shell without job control starts background jobs with SIGINT
    ignored (`nohup pytest ... &` in a script), and Python then installs no KeyboardInterrupt handler:
    the launcher would ignore the SIGINT these tests send and train to the end."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def children_named(proc: subprocess.Popen, marker: str) -> list[psutil.Process]:
    """The descendants of a launcher whose command line holds `marker`."""
    return [c for c in psutil.Process(proc.pid).children(recursive=True) if marker in " ".join(c.cmdline())]
