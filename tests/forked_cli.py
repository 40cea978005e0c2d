"""Run `python launch/<script>.py ARGS` as a child forked from a process that has already imported torch,
DeepSpeed and ngpt_ds, instead of a fresh interpreter.

A fresh interpreter spends about 4 s of CPU importing torch and DeepSpeed before the command reads its
first argument; the refusal tables run hundreds of commands that stop a second later. The child here is
still a process of its own, so the command runs exactly as from a shell: the script file runs as
`__main__` with its `sys.argv`, working folder and environment; stdout and stderr are files; an uncaught
exception prints its traceback; the exit status is the interpreter's and atexit handlers run. What differs
is only what happens at import time: the modules were imported once, under `conftest.cpu_env()`, so a
test whose environment changes import-time behaviour (DS_ACCELERATOR, a missing package) and the tests
of the entry scripts themselves start real interpreters with `conftest.run`.

One server per pytest process (xdist workers each get their own), started on first use.
"""

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# The server: imports what the commands import, then forks one child per request line on stdin and
# answers on its original stdout with the child's pid, then its exit status.
_SERVER = r"""
import json, os, runpy, sys
import torch, deepspeed, yaml, sentencepiece  # noqa: F401  (the imports every child would otherwise repeat)
import ngpt_ds.cli.train, ngpt_ds.cli.prepare, ngpt_ds.cli.export, ngpt_ds.cli.generate  # noqa: F401
import ngpt_ds.cli.evaluate, ngpt_ds.train.loop, ngpt_ds.model  # noqa: F401

answers = os.fdopen(os.dup(1), "w")
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 1)
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        answers.close()
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
    print(pid, flush=True, file=answers)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True, file=answers)
"""

_server: subprocess.Popen | None = None
_unread = b""  # what the server wrote beyond the last line read


def _start(env: dict) -> subprocess.Popen:
    global _server, _unread
    if _server is None or _server.poll() is not None:
        _server = subprocess.Popen(
            [sys.executable, "-c", _SERVER], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
        _unread = b""
    return _server


def _read_line(server: subprocess.Popen, timeout: float | None = None) -> str | None:
    """The server's next answer line, or None when none came within `timeout` seconds."""
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
    return line.decode()


def run_forked(script: Path, argv: list, *, env: dict, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGV` in a forked child (module docstring); the CompletedProcess that
    subprocess.run(..., capture_output=True, text=True) would give. A child still running after `timeout`
    seconds is killed with its process group and subprocess.TimeoutExpired raised, as subprocess.run does."""
    from conftest import cpu_env

    server = _start(cpu_env())
    with tempfile.TemporaryDirectory(prefix="forked_cli_") as tmp:
        request = {
            "script": str(Path(script).resolve()),
            "argv": [str(a) for a in argv],
            "env": {k: str(v) for k, v in env.items()},
            "cwd": str(cwd),
            "stdout": f"{tmp}/stdout",
            "stderr": f"{tmp}/stderr",
        }
        server.stdin.write((json.dumps(request) + "\n").encode())
        pid = int(_read_line(server))
        answer = _read_line(server, timeout)
        if answer is None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:  # killed before it made its own group
                os.kill(pid, signal.SIGKILL)
            _read_line(server)
            raise subprocess.TimeoutExpired([script, *argv], timeout)
        returncode = int(answer)
        stdout = Path(request["stdout"]).read_text(errors="replace")
        stderr = Path(request["stderr"]).read_text(errors="replace")
    return subprocess.CompletedProcess([sys.executable, str(script), *request["argv"]], returncode, stdout, stderr)
