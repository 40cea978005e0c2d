#!/usr/bin/env python3
"""The Docker image's entrypoint: run a command, pass stop signals on, and exit only when everything
it started has ended.

    python3 launch/entrypoint.py deepspeed launch/train.py --deepspeed_config ds_configs/zero2.json

`docker stop` sends SIGTERM to PID 1 only, and when PID 1 exits the kernel kills every other
process in the container. With `exec deepspeed ...` or tini as PID 1 that cuts a checkpoint short:
DeepSpeed's runner has no handler for local runs and dies of SIGTERM at once (tini then exits with
it), while its ranks are still saving. This process instead:

- starts the command in a process group of its own;
- passes SIGTERM, SIGINT and SIGHUP on to every process it started (torchrun puts its ranks in
  sessions of their own, so a group signal alone would miss them);
- passes SIGUSR1 and SIGUSR2, requests to checkpoint and stop (README "Stopping a run"), only to the
  processes that handle them: the ranks. DeepSpeed's runner and launch.py do not, and would die of
  them, ending the command with 138 while the ranks stop cleanly. When no process handles one yet (a
  rank still starting), it is delivered as soon as one does;
- is a child subreaper (prctl PR_SET_CHILD_SUBREAPER; PID 1 is one anyway), so ranks orphaned by a
  runner that died are re-parented to it, and it waits for all of them;
- refuses, in one line and with status 2, a torchrun command whose --master_port another process holds on this
  host, before torchrun starts (it would end with a traceback of its own);
- exits with the command's status: its exit code, or 128 + N when signal N ended it (143 after
  `docker stop`, whose SIGTERM the deepspeed runner does not handle); like a shell, 127 when the
  command is not found and 126 when it is found but cannot be run (not executable, a folder).

Outside a container it does the same, e.g. to make a shell wait for the save after Ctrl-C.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
REQUESTS = (signal.SIGUSR1, signal.SIGUSR2)  # for the processes that handle them only
PR_SET_CHILD_SUBREAPER = 36
RETRY_S = 0.2
USAGE = "usage: entrypoint.py COMMAND [ARGS...]"
DEFAULT_PORT = 29500  # torchrun's rendezvous port where more than one node and no port is given
TIME_WAIT = "06"  # the TCP state in /proc/net/tcp's st column


def _become_subreaper() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: orphans go to init, the process group is still signalled
        pass


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (children of adopted orphans included)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _handles(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (the SigCgt mask of /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, IndexError, ValueError):
        pass
    return False


def _advice(command: str, err: OSError) -> str:
    """What to do about a command that could not be started (after its error, as the shell says it)."""
    if isinstance(err, FileNotFoundError):
        if os.sep in command and os.path.isfile(command):  # the file is there: its #! line names a missing program
            return " (its #! line names an interpreter that is not installed: install it, or run the script with one that is)"
        return " (not on PATH or no such file: check the name, or give its path)"
    if os.path.isdir(command):
        return " (it is a folder: name the program or script inside it)"
    if isinstance(err, PermissionError):
        return (
            f" (not executable: chmod +x {command}, or name its interpreter first: python3 {command}, bash {command})"
        )
    if err.errno == errno.ENOEXEC:
        return f" (not a program, and no #! line: name its interpreter first: python3 {command}, bash {command})"
    return ""


def _torchrun_port_taken(argv: list[str]) -> str | None:
    """The one-line refusal of a torchrun command whose rendezvous port another process holds on this host, or None.

    torchrun's agent, not a rank, listens on --master_port (static rendezvous, node rank 0), before any rank starts:
    a taken port ended the command with torchrun's 40-line traceback ending in 'DistNetworkError: The server socket
    has failed to listen on any local network address. port: P, ... EADDRINUSE'. Read with torchrun's own parser
    (torch.distributed.run.get_args_parser); --standalone, another rendezvous backend and the other nodes' agents
    listen on no port of this one. A port taken after this check still gets torchrun's own error."""
    torchrun_args = _torchrun_args(argv)
    if torchrun_args is None or not _some_port_in_use(_candidate_ports(torchrun_args, os.environ)):
        return None
    try:  # torch costs seconds of CPU to import (torchrun imports it again): only where a port it may use is in use
        from torch.distributed.run import get_args_parser
    except ImportError:  # torchrun itself will fail, in its own words
        return None
    try:
        args = get_args_parser().parse_args(torchrun_args)
    except SystemExit:  # --help or an error torchrun will print itself
        return None
    if args.standalone or args.rdzv_backend != "static" or args.node_rank != 0:
        return None
    option = "--master_port"
    port = args.master_port
    if args.rdzv_endpoint:  # the static agent listens on the endpoint's port, not --master_port
        option, port = "--rdzv_endpoint", _endpoint_port(args.rdzv_endpoint)
    elif port is None:  # not given (newer torchrun): one node then takes a c10d store on a free port, more 29500
        port = None if str(args.nnodes).split(":")[-1] == "1" else DEFAULT_PORT
    if port is None:
        return None
    if not _bind_refused(port):
        return None
    return (
        f"error: torchrun's rendezvous port {port} ({option}) is taken on this host: another job or program holds it "
        f"(listens there, or has bound it). Give torchrun a free one with {option}, or stop the other job"
    )


def _bind_refused(port: int) -> bool:
    """Whether binding `port` as torchrun's agent's store listens (every address, SO_REUSEADDR) fails with
    EADDRINUSE: a process listens on it, has bound it (no listen yet), or connects from it."""
    for family, anywhere in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as torch's store: TIME_WAIT is no holder
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too
                probe.bind((anywhere, port))
            return False
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return True
            # no IPv6 here: try IPv4
    return False


def _candidate_ports(torchrun_args: list[str], env: Mapping[str, str]) -> set[int]:
    """Every port torchrun's parser could read from `torchrun_args` (at least the one `_torchrun_port_taken` probes):
    each argument read as a number whole, after its last '=' (--master_port=P) and after its last ':' (an
    endpoint HOST:PORT), the same for torchrun's PET_* variables (its options' defaults), and DEFAULT_PORT. More
    than torchrun reads (a script's own arguments too) costs only the slow check, never a refusal."""
    ports = {DEFAULT_PORT}
    values = [*torchrun_args, *(value for name, value in env.items() if name.startswith("PET_"))]
    for value in values:
        for text in (value, value.rpartition("=")[2], value.rpartition(":")[2]):
            try:
                port = int(text)  # as argparse's type=int reads --master_port
            except ValueError:
                continue
            if 0 < port < 65536:
                ports.add(port)
    return ports


def _some_port_in_use(ports: set[int]) -> bool:
    """Whether a TCP socket of this host (this network namespace) has one of `ports` as its local port, but for
    those in TIME_WAIT, which hold no port against torch's store (SO_REUSEADDR): read from /proc, True where it
    cannot be read. A port only bound (bind without listen: a program that sets up its server before it listens)
    is in no row there, and passed: torchrun's agent then failed to listen on it, in a 40-line traceback ending in
    'DistNetworkError: The server socket has failed to listen ... EADDRINUSE'. Each port not listed is bound once
    as the agent would (`_bind_refused`: microseconds, no torch import)."""
    used, read = set(), False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):  # tcp6 is missing where the kernel has no IPv6
        try:
            with open(table, encoding="ascii") as f:
                rows = f.read().splitlines()[1:]
            for row in rows:
                fields = row.split()  # sl local_address rem_address st ...: local_address is ADDR:PORT in hex
                if fields[3] != TIME_WAIT:
                    used.add(int(fields[1].rpartition(":")[2], 16))
            read = True
        except (OSError, IndexError, ValueError):
            continue
    if used & ports or not read:  # nothing read (no /proc: not Linux): the slow check
        return True
    return any(_bind_refused(port) for port in sorted(ports))


def _endpoint_port(endpoint: str) -> int | None:
    """The port of torchrun's --rdzv_endpoint HOST:PORT ([IPv6]:PORT too), None where it names none."""
    _, colon, port = endpoint.rpartition(":")
    return int(port) if colon and port.isdigit() else None


def _torchrun_args(argv: list[str]) -> list[str] | None:
    """torchrun's arguments in `argv` (`torchrun ARGS`, `python -m torch.distributed.run ARGS`), or None."""
    if os.path.basename(argv[0]) == "torchrun":
        return argv[1:]
    if os.path.basename(argv[0]).startswith("python") and argv[1:3] == ["-m", "torch.distributed.run"]:
        return argv[3:]
    return None


def main(argv: list[str]) -> int:
    if not argv:
        print(f"error: no command to run; {USAGE} (--help says what it does)", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):  # what it does, not only the example line (all --help printed)
        print(f"{USAGE}\n\n{__doc__.strip()}")
        return 0
    taken = _torchrun_port_taken(argv)
    if taken is not None:
        print(taken, file=sys.stderr)
        return 2
    _become_subreaper()
    children: list[subprocess.Popen] = []
    early: list[int] = []

    def forward(signum, frame) -> None:
        if not children:  # before the command started: pass it on right after
            early.append(signum)
            return
        if signum in REQUESTS and not send(signum):
            threading.Thread(target=send_when_handled, args=(signum,), daemon=True).start()
        elif signum not in REQUESTS:
            send(signum)

    def send(signum: int) -> bool:
        """Signal the command and everything below it (for a request, those that handle it); whether any was."""
        running = [children[0].pid] if children[0].returncode is None else []  # a reaped pid may be reused
        sent = False
        for pid in {*running, *_descendants(os.getpid())}:
            if signum in REQUESTS and not _handles(pid, signum):
                continue
            try:
                os.kill(pid, signum)
                sent = True
            except ProcessLookupError:
                pass
        return sent

    def send_when_handled(signum: int) -> None:
        while (children[0].returncode is None or _descendants(os.getpid())) and not send(signum):
            time.sleep(RETRY_S)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    try:
        children.append(subprocess.Popen(argv, start_new_session=True))
    except OSError as err:
        print(f"error: cannot run {argv[0]}: {err.strerror}{_advice(argv[0], err)}", file=sys.stderr)
        return 127 if isinstance(err, FileNotFoundError) else 126  # the shell's codes: not found, not runnable
    child = children[0]
    for signum in early:
        forward(signum, None)
    status = None
    while True:  # reap the command and every orphan re-parented here, until none is left
        try:
            pid, wait_status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == child.pid:
            status = os.waitstatus_to_exitcode(wait_status)
            child.returncode = status
    return 128 - status if status is not None and status < 0 else (status or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
