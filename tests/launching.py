"""Starting the processes a test runs: one command, a real multi-rank job (torchrun, or plain ranks with
torch's env:// variables), launch/train.py's command line, the stand-in commands a launcher test puts on PATH,
launch/slurm/*.sbatch run against them in a Slurm job's environment (slurm_env, run_sbatch), and lm-eval's command
line offline (run_lm_eval).

tests/conftest.py re-exports every name here, so `from conftest import run, torchrun` keeps working."""

import contextlib
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


PORTS = range(10000, 16000)
"""Where free_port draws from: below Linux's ephemeral range (ip_local_port_range, 32768-60999 by default) and apart
from the fixed choices of this repository (tests/system/slurm_cluster.sh's daemons from 16817, ngpt_ds's Slurm
ports 20000-31999, DeepSpeed's launcher 29500, bench/convergence.py 29500-30499)."""
_given: set[int] = set()
_random = random.SystemRandom()  # not the seedable generator: tests seed it, and two pytest runs would draw alike


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):  # not Linux: no range to stay out of is known
        return 0


def free_port() -> int:
    """A port free on 127.0.0.1 now, for a rendezvous that a child process listens on seconds later.

    Not one from bind(0): that port is in the kernel's ephemeral range, and in the seconds until the child's rank 0
    (importing torch first) listened on it, the kernel could hand the same port to any other process's connect() or
    bind(0). Under pytest-xdist the other worker's 2-rank jobs open dozens (gloo's pairs, the TCPStore clients), and
    an outgoing connection on the port is enough for the listen to fail with EADDRINUSE: rank 0 stopped with 'cannot
    listen for the job's rendezvous on 127.0.0.1:PORT: another process on this host holds that port'. Below the range
    the kernel hands out no port by itself; the xdist workers draw from separate slices, and this process never
    gives a port twice (a finished job's port may still be in TIME_WAIT)."""
    ports = range(PORTS.start, min(PORTS.stop, _ephemeral_low()))
    if len(ports) < 1000:  # a machine whose ephemeral range starts lower: nothing better than the kernel's choice
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    workers = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), 1)
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")) % workers
    width = len(ports) // workers
    mine = ports[worker * width : (worker + 1) * width]
    start = _random.randrange(len(mine))  # separate pytest runs on one machine start apart
    for i in range(len(mine)):
        port = mine[(start + i) % len(mine)]
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # a server listening there, or a finished job's connections in TIME_WAIT
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port on 127.0.0.1 in {mine.start}-{mine.stop - 1}")


def wait_while_running(proc: subprocess.Popen, ready, what: str, *, limit_s: int = 300) -> None:
    """Poll `ready()` every 50 ms until it holds. The test fails, showing the end of `proc`'s stderr (a pipe), if
    `proc` ends first, and fails naming `what` if `limit_s` passes (a hang guard only)."""
    deadline = time.monotonic() + limit_s
    while not ready():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{what}: not within {limit_s} s"
        time.sleep(0.05)


def cpu_env(**extra) -> dict:
    """Child processes: CPU DeepSpeed, one thread per rank, the repo importable, the JSON's precision on any CPU."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    env["NGPT_DS_CPU_BF16"] = "1"  # a CPU without native bf16 would otherwise train in fp32 (README "fp32 switch")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(cmd, *, timeout=600, cwd=REPO, env=None, check=True) -> subprocess.CompletedProcess:
    """Run a command; on failure show its output (the test fails with the real error)."""
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env or cpu_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def run_launch(script: str, *argv, timeout=600, cwd=REPO, env=None, check=True) -> subprocess.CompletedProcess:
    """`python launch/SCRIPT ARGV` as run() gives it, in a child forked from a process that has imported torch
    and DeepSpeed already (tests/forked_cli.py): for single-process commands, 4 s faster each."""
    from forked_cli import run_forked

    proc = run_forked(REPO / "launch" / script, list(argv), env=env or cpu_env(), cwd=cwd, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(
            f"command failed ({proc.returncode}): launch/{script} {' '.join(map(str, argv))}\n"
            f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def torchrun(script, *args, nproc=2, **kwargs) -> subprocess.CompletedProcess:
    """A real multi-process job on gloo, as `torchrun --nproc_per_node N script args` runs it.

    A job that must succeed (`check`, run()'s default) runs its ranks as children forked from a process
    that has imported torch and DeepSpeed once (tests/forked_cli.py), with the variables torchrun gives
    them: about 11 s of CPU less per 2-rank job, half of a tiny run's. Its stdout and stderr are the
    ranks' in rank order, its status 0 or, when a rank failed, 1 (torchrun's). A job that may fail
    (check=False) runs under torchrun itself, whose teardown, exit status and output the test reads."""
    if kwargs.get("check", True):
        from forked_cli import run_forked_ranks

        cwd = Path(kwargs.get("cwd", REPO))
        port, base = free_port(), kwargs.get("env") or cpu_env()
        torchrun_vars = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": nproc, "GROUP_RANK": 0}
        torchrun_vars |= {"LOCAL_WORLD_SIZE": nproc, "ROLE_WORLD_SIZE": nproc, "GROUP_WORLD_SIZE": 1}
        torchrun_vars |= {"ROLE_NAME": "default", "TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_RESTART_COUNT": 0}
        torchrun_vars |= {"TORCHELASTIC_MAX_RESTARTS": 0}  # not TORCHELASTIC_USE_AGENT_STORE: rank 0 hosts it
        envs = [dict(base, **torchrun_vars, RANK=r, LOCAL_RANK=r, ROLE_RANK=r) for r in range(nproc)]
        ranks = run_forked_ranks(cwd / script, list(args), envs, cwd=cwd, timeout=kwargs.get("timeout", 600))
        cmd = ["torchrun", "--nproc_per_node", nproc, script, *args]
        failed = any(rank.returncode != 0 for rank in ranks)
        proc = subprocess.CompletedProcess(
            cmd, int(failed), "".join(rank.stdout for rank in ranks), "".join(rank.stderr for rank in ranks)
        )
        if failed:
            pytest.fail(
                f"ranks failed ({[rank.returncode for rank in ranks]}): {' '.join(map(str, cmd))}\n"
                f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
            )
        return proc
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        nproc,
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        free_port(),
        script,
        *args,
    ]
    return run(cmd, **kwargs)


def rank_env(rank: int, nproc: int, port: int, **extra) -> dict:
    """cpu_env() for rank `rank` of `nproc` on this host, with torch's env:// variables (RANK, WORLD_SIZE,
    LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and `extra` on top."""
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    return cpu_env(RANK=rank, WORLD_SIZE=nproc, LOCAL_RANK=rank, LOCAL_WORLD_SIZE=nproc, **rendezvous, **extra)


def start_ranks(
    args, *, nproc: int = 2, port: int | None = None, logs: Path | None = None, **env
) -> list[subprocess.Popen]:
    """`python args` once per rank, as plain processes with torch's env:// variables on this host: the
    way a launcher that does not tear a job down by itself starts them (srun without
    --kill-on-bad-exit, a container orchestrator), so that each rank's own exit status is seen.
    Each rank's output goes to `logs`/rank<N>.log, or without `logs` is captured as text. `env` is added
    to each rank's environment."""
    port = free_port() if port is None else port
    ranks = []
    for rank in range(nproc):
        variables = rank_env(rank, nproc, port, **env)
        cmd = [sys.executable, *map(str, args)]
        if logs is None:
            ranks.append(
                subprocess.Popen(
                    cmd, env=variables, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            )
        else:
            with open(logs / f"rank{rank}.log", "w") as log:
                ranks.append(subprocess.Popen(cmd, env=variables, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
    return ranks


def run_ranks(args, *, nproc: int = 2, timeout: int = 300, **env) -> tuple[list[int], list[str]]:
    """`python args` once per rank, started as start_ranks starts them, with `env` added to each rank's, and waited
    for: (each rank's exit status, each rank's output, stdout and stderr together), in rank order."""
    port, ranks = free_port(), []
    for rank in range(nproc):
        cmd = [sys.executable, *map(str, args)]
        ranks.append(
            subprocess.Popen(
                cmd,
                env=rank_env(rank, nproc, port, **env),
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [rank.communicate(timeout=timeout)[0] for rank in ranks]
    return [rank.returncode for rank in ranks], outputs


def train_on_two_nodes(tmp_path: Path, setup, *argv, timeout: int = 240) -> list[tuple[int, str, str]]:
    """launch/train.py as ranks 0 and 1 of one job, each in a working folder of its own, tmp_path/node<rank>,
    which stands in for a node: relative paths in `argv` are node-local files there. `setup(rank, node)`
    fills the folder first; an item of `argv` may be a function of the folder (a per-node path). Returns
    each rank's (exit status, stdout, stderr)."""
    port, procs = free_port(), []
    for rank in range(2):
        node = tmp_path / f"node{rank}"
        node.mkdir(exist_ok=True)
        setup(rank, node)
        env = rank_env(rank, 2, port)
        args = [str(a(node) if callable(a) else a) for a in argv]
        cmd = [sys.executable, str(REPO / "launch/train.py"), *args, "--no-progress"]
        procs.append(
            subprocess.Popen(cmd, env=env, cwd=node, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outputs = [proc.communicate(timeout=timeout) for proc in procs]
    return [(proc.returncode, out, err) for proc, (out, err) in zip(procs, outputs)]


def train_flags(config, ds_config, data, out, *extra) -> list:
    """launch/train.py's options for one run, without the progress bar; `extra` after them."""
    return ["--config", config, "--deepspeed_config", ds_config, "--data", data, "--out", out, "--no-progress", *extra]


def train_cmd(config, ds_config, data, out, *extra) -> list:
    """launch/train.py (its full path) and train_flags: what `python`, torchrun or a launcher runs."""
    return [REPO / "launch/train.py", *train_flags(config, ds_config, data, out, *extra)]


def train_run(
    config, ds_config, data, out, *extra, nproc: int = 1, forked: bool = False, **kwargs
) -> subprocess.CompletedProcess:
    """One run of launch/train.py to its end: plain `python` for one rank (torchrun's launcher would
    import torch once more, about 2 s of CPU per run), torchrun for more. `forked`, one rank: the run in a
    child forked from a process that imported torch and DeepSpeed already (run_launch, tests/forked_cli.py),
    about 0.6 s of CPU for a tiny run's start instead of 4.5 s; the same CompletedProcess, environment and
    working folder. Not for a run whose environment changes what a module does at import time (DS_ACCELERATOR,
    NGPT_DS_NORM_KERNEL, torch's thread settings, a sitecustomize on PYTHONPATH), nor for a test of the
    process itself (an exit through a signal, sys.modules): the forked child imported those long before."""
    if nproc == 1 and forked:
        return run_launch("train.py", *train_flags(config, ds_config, data, out, *extra), **kwargs)
    cmd = train_cmd(config, ds_config, data, out, *extra)
    if nproc == 1:
        return run([sys.executable, *cmd], **kwargs)
    return torchrun(*cmd, nproc=nproc, **kwargs)


def convert_universal(source: Path, universal: Path, *, timeout: int = 240) -> None:
    """What a resume at another data-parallel size makes of checkpoint `source`: DeepSpeed's universal conversion as
    the trainer runs it (the child `python -m ngpt_ds.train.reshape` into a work folder `converted` beside
    `universal`), then the trainer's seal and rename into `universal` (checkpoint.finish_universal)."""
    from ngpt_ds.train import checkpoint

    converted = universal.parent / "converted"
    proc = subprocess.run(
        [sys.executable, "-m", "ngpt_ds.train.reshape", str(source), str(converted)],
        env=cpu_env(),
        capture_output=True,
        text=True,
        timeout=timeout,  # a hang guard only
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checkpoint.finish_universal(converted, universal, source)


def run_in_session(cmd: list, *, timeout: float, **popen) -> subprocess.CompletedProcess[str]:
    """`cmd` in a session of its own, its output as text (`popen`: Popen's other arguments, stdout=PIPE and the
    like). A command still running after `timeout` s (a hang guard) is killed with every process of its group (an
    mpirun's ranks, a preparation's workers), and the test fails as hung, with the output's end."""
    import signal

    proc = subprocess.Popen([str(c) for c in cmd], text=True, start_new_session=True, **popen)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"hung: no answer in {timeout} s; its output ends: {((out or '') + (err or ''))[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_limited(
    cmd: list,
    *,
    timeout: float,
    stack: int | None = None,
    address: int | None = None,
    address_hard: bool = False,
    **popen,
) -> subprocess.CompletedProcess[str]:
    """`cmd` under real limits set in the child before exec, its stdout and stderr captured (run_in_session: failed
    as hung after `timeout` s): a `ulimit -s` of `stack` bytes and a `ulimit -v` of `address` bytes, soft limits
    with the hard ones unlimited (address_hard: `address` is the hard limit too, as bash's `ulimit -v N` sets)."""
    import resource

    def limits() -> None:
        if stack is not None:
            resource.setrlimit(resource.RLIMIT_STACK, (stack, resource.RLIM_INFINITY))
        if address is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address, address if address_hard else resource.RLIM_INFINITY))

    return run_in_session(
        cmd, timeout=timeout, preexec_fn=limits, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen
    )


def run_mpirun(args: list, env: dict, *, timeout: int) -> tuple[int, str]:
    """`mpirun --allow-run-as-root --oversubscribe ARGS` (mpirun's options, -np and the command) in a session of its
    own (run_in_session: killed with its ranks and failed as hung after `timeout` s): (exit status, stdout and stderr
    together)."""
    proc = run_in_session(
        ["mpirun", "--allow-run-as-root", "--oversubscribe", *args],
        timeout=timeout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return proc.returncode, proc.stdout


def stand_in_commands(folder: Path, commands: dict[str, str]) -> Path:
    """`folder` (made if missing) with an executable script per name in `commands` (name -> its text): the stand-in
    commands (srun, ssh, deepspeed, ...) a launcher test puts first on PATH. Returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in commands.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


SLURM_JOB = {
    "SLURM_JOB_ID": "4711",
    "SLURM_JOB_NODELIST": "node1",
    "SLURM_JOB_NUM_NODES": "1",
    "SLURM_NNODES": "1",
    "SLURM_NTASKS_PER_NODE": "1",
}
"""What Slurm gives the batch step of a one-node job with one task a node, job 4711 on node1."""


def slurm_env(stand_ins: Path, *, drop: tuple[str, ...] = ("SLURM_", "MASTER_"), **overrides) -> dict[str, str]:
    """The environment launch/slurm/*.sbatch run in, in a test against stand-in commands: this process's without the
    variables whose names start with `drop` (a Slurm job or a rendezvous the tests run in), the commands of
    `stand_ins` first on PATH, SLURM_JOB's variables, and `overrides` on top, as strings (another job id, a second
    node, the stand-ins' FAKE_* settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, "PATH": f"{stand_ins}:{env['PATH']}", **SLURM_JOB, **{k: str(v) for k, v in overrides.items()}}


def run_sbatch(script: str, env: dict, out, *, cwd=REPO, timeout: int = 60) -> subprocess.CompletedProcess:
    """`bash launch/slurm/SCRIPT --out OUT` in `cwd`, as sbatch runs a job's batch script: its exit status and output
    (text), whatever the status."""
    cmd = ["bash", str(REPO / "launch/slurm" / script), "--out", str(out)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def run_lm_eval(
    model_path, tasks: str, include_path: Path, cache: Path, *extra, check=True
) -> subprocess.CompletedProcess:
    """`python -m ngpt_ds.infer.lm_eval_cli --model ngpt_ds --model_args path=MODEL_PATH --tasks TASKS --include_path
    INCLUDE_PATH EXTRA` as run() gives it: offline (the tasks' own local files only), with `cache` as the datasets
    cache."""
    env = cpu_env(HF_DATASETS_OFFLINE=1, HF_HUB_OFFLINE=1, HF_DATASETS_CACHE=cache)
    cmd = [sys.executable, "-m", "ngpt_ds.infer.lm_eval_cli", "--model", "ngpt_ds", "--model_args"]
    return run(
        [*cmd, f"path={model_path}", "--tasks", tasks, "--include_path", include_path, *extra], env=env, check=check
    )


@contextlib.contextmanager
def rank_processes(cmds: list, *, cwd: Path, preexec: dict | None = None) -> Iterator[list[subprocess.Popen]]:
    """Rank r runs the command cmds[r], a plain process with rank_env's variables for a job of len(cmds) ranks on this
    host, in `cwd`, stdout and stderr piped as text; `preexec` maps a rank to its preexec_fn. A rank still running when
    the block ends is killed; every rank is waited for and its pipes closed."""
    port, preexec = free_port(), preexec or {}
    procs = [
        subprocess.Popen(
            [str(c) for c in cmd],
            env=rank_env(rank, len(cmds), port),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec.get(rank),
        )
        for rank, cmd in enumerate(cmds)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                pipe.close()
