"""Run `python script.py ARGS`, or the ranks of a job, as children forked from a process that has already
imported torch, DeepSpeed and ngpt_ds, instead of fresh interpreters.

A fresh interpreter spends about 4.4 s of CPU importing torch, DeepSpeed and the trainer before it reads
its first argument: more than half the CPU of a 20-step 2-rank tiny run under torchrun, and the refusal
tables run hundreds of commands that stop a second later. Each child here is still a process of its
own, so the command runs as from a shell: the script file runs as `__main__` with its `sys.argv`,
working folder and environment (for ranks: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR
and MASTER_PORT, what torchrun sets and the trainer reads); stdout and stderr are files; an uncaught
exception prints its traceback; the exit status is the interpreter's and atexit handlers run. What
differs is what happens at import time (the modules were imported once, under `conftest.cpu_env()`)
and the parent process (this server, not a launcher). Tests of a launcher, of the entry scripts
themselves, or of an environment that changes import-time behaviour start real interpreters.

One server per pytest process (xdist workers each get their own), started on first use.
"""

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The server: imports what the commands import, then forks one child per request line on stdin. It
# answers on its original stdout with "pid N" for each request, in order, and "exit N STATUS" when a
# child ends (polled every 50 ms, so answers of both kinds interleave).
_SERVER = r"""
import json, os, runpy, select, sys
import torch, deepspeed, yaml, sentencepiece  # noqa: F401  (the imports every child would otherwise repeat)
import ngpt_ds.cli.train, ngpt_ds.cli.prepare, ngpt_ds.cli.export, ngpt_ds.cli.generate  # noqa: F401
import ngpt_ds.cli.evaluate, ngpt_ds.train.loop, ngpt_ds.model  # noqa: F401
# What every trainer child imported on its own, 2.2 s of its CPU: DeepSpeed's ZeRO optimizer check (and ZeRO 1/2's
# every step) imports its Muon module, whose @torch.compile imports torch._dynamo and torch._inductor; the startup's
# memory check on `meta` imports torch._dynamo (torch's meta kernels); rank 0's metrics import TensorBoard.
import deepspeed.runtime.zero.muon.muon_optimizer, torch.utils.tensorboard  # noqa: F401

answers = os.dup(1)
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 1)


def become(request):
    os.close(answers)
    os.dup2(null, 0)
    sys.stdin = open(os.devnull)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.setpgid(0, 0)  # its own process group: a timeout kills the command and whatever it started
    sys.argv = [request["script"], *request["argv"]]
    sys.path[0] = os.path.dirname(request["script"])
    runpy.run_path(request["script"], run_name="__main__")
    sys.exit(0)  # a script that returns without sys.exit: status 0, after the normal interpreter exit


children, unread = set(), b""
while True:
    if select.select([0], [], [], 0.05)[0]:
        chunk = os.read(0, 65536)
        if not chunk:
            break  # the test process has ended
        unread += chunk
        while b"\n" in unread:
            line, _, unread = unread.partition(b"\n")
            pid = os.fork()
            if pid == 0:
                become(json.loads(line))
            children.add(pid)
            os.write(answers, f"pid {pid}\n".encode())
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            break
        children.discard(pid)
        os.write(answers, f"exit {pid} {os.waitstatus_to_exitcode(status)}\n".encode())
"""

_server: subprocess.Popen | None = None
_unread = b""  # what the server wrote beyond the last line read
_exits: dict[int, int] = {}  # pid -> exit status, as the server reported them


def _start() -> subprocess.Popen:
    global _server, _unread
    if _server is None or _server.poll() is not None:
        from conftest import cpu_env

        _server = subprocess.Popen(
            [sys.executable, "-c", _SERVER], env=cpu_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
        _unread = b""
        _exits.clear()
    return _server


def _read_answer(server: subprocess.Popen, timeout: float | None = None) -> tuple[str, int] | None:
    """The server's next answer ("pid", N) or ("exit", N) with the status recorded in _exits, or None
    when none came within `timeout` seconds."""
    global _unread
    while b"\n" not in _unread:
        ready, _, _ = select.select([server.stdout], [], [], timeout)
        if not ready:
            return None
        chunk = os.read(server.stdout.fileno(), 4096)
        if not chunk:
            raise RuntimeError(f"the forked-command server exited ({server.wait()}); its stderr is the test's")
        _unread += chunk
    line, _, _unread = _unread.partition(b"\n")
    kind, pid, *status = line.decode().split()
    if kind == "exit":
        _exits[int(pid)] = int(status[0])
    return kind, int(pid)


def _spawn(server: subprocess.Popen, script: Path, argv: list, env: dict, cwd: Path, out: Path) -> int:
    request = {
        "script": str(Path(script).resolve()),
        "argv": [str(a) for a in argv],
        "env": {k: str(v) for k, v in env.items()},
        "cwd": str(cwd),
        "stdout": str(out) + ".stdout",
        "stderr": str(out) + ".stderr",
    }
    server.stdin.write((json.dumps(request) + "\n").encode())
    while True:
        kind, pid = _read_answer(server)
        if kind == "pid":
            return pid


def _kill(pid: int) -> None:
    for kill, target in ((os.killpg, pid), (os.kill, pid)):  # the group, or the child before it made one
        try:
            kill(target, signal.SIGKILL)
            return
        except ProcessLookupError:
            pass


def run_forked_ranks(
    script: Path, argv: list, envs: list[dict], *, cwd: Path, timeout: float, failed_grace_s: float = 30
) -> list[subprocess.CompletedProcess]:
    """One forked child per environment in `envs`, all running `python SCRIPT ARGV` at once; each one's
    CompletedProcess. As torchrun does, once a child has failed the others get `failed_grace_s` seconds
    to end on their own, then are killed (a rank left waiting for a dead peer would otherwise hang).
    Children still running after `timeout` seconds are killed and subprocess.TimeoutExpired raised."""
    server = _start()
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="forked_cli_") as tmp:
        pids = [_spawn(server, script, argv, env, cwd, Path(tmp) / str(i)) for i, env in enumerate(envs)]
        kill_at = None
        while not all(pid in _exits for pid in pids):
            if kill_at is None and any(_exits.get(pid, 0) != 0 for pid in pids):
                kill_at = time.monotonic() + failed_grace_s
            now = time.monotonic()
            if now >= deadline or (kill_at is not None and now >= kill_at):
                for pid in pids:
                    if pid not in _exits:
                        _kill(pid)
                while not all(pid in _exits for pid in pids):
                    _read_answer(server)
                if now >= deadline:
                    for pid in pids:
                        del _exits[pid]  # a later child may get the same pid
                    raise subprocess.TimeoutExpired([script, *argv], timeout)
                break
            _read_answer(server, min(deadline, kill_at or deadline) - now)
        results = []
        for i, pid in enumerate(pids):
            stdout = Path(f"{tmp}/{i}.stdout").read_text(errors="replace")
            stderr = Path(f"{tmp}/{i}.stderr").read_text(errors="replace")
            args = [sys.executable, str(script), *map(str, argv)]
            results.append(subprocess.CompletedProcess(args, _exits.pop(pid), stdout, stderr))
    return results


def run_forked(script: Path, argv: list, *, env: dict, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGV` in a forked child (module docstring); the CompletedProcess that
    subprocess.run(..., capture_output=True, text=True) would give. A child still running after `timeout`
    seconds is killed with its process group and subprocess.TimeoutExpired raised, as subprocess.run does."""
    return run_forked_ranks(script, argv, [env], cwd=cwd, timeout=timeout)[0]
