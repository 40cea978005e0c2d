"""Shared test helpers: real multi-process launches, and skips that CI turns into failures.

The stop tests' configs are at the end; their other helpers are in tests/stop_helpers.py."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


# The files that take longest, in the order tests/run.sh's two workers (pytest-xdist, one file at a time
# each) should start them: the last file to start sets how long the other worker waits at the end.
# Measured with --durations=0; a file not listed runs after these, in its usual order.
SLOWEST_FILES_FIRST = (
    "test_main_command.py",
    "test_launch_stop_paths.py",
    "test_bench.py",
    "test_sequence_parallel.py",
    "test_checkpoint_verify_ranks.py",
    "test_safe_load.py",
    "test_resume_world_size.py",
    "test_compile.py",
    "test_trainer.py",
    "test_pipeline.py",
    "test_launch_faults.py",
    "test_tensor_parallel.py",
    "test_launch_slurm.py",
    "test_checkpoint_faults.py",
    "test_resume_changes.py",
    "test_nccl27_collective_trace.py",
    "test_gpu28_collective_trace_modes.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(**extra) -> dict:
    """Child processes: CPU DeepSpeed, one thread per rank, the repo importable, the JSON's precision on any CPU."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    env["NGPT_DS_CPU_BF16"] = "1"  # a CPU without native bf16 would otherwise train in fp32 (README "fp32 switch")
    env.update({k: str(v) for k, v in extra.items()})
    return env


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
        env = cpu_env(RANK=rank, WORLD_SIZE=2, LOCAL_RANK=rank, LOCAL_WORLD_SIZE=2, MASTER_ADDR="127.0.0.1")
        env["MASTER_PORT"] = str(port)
        args = [str(a(node) if callable(a) else a) for a in argv]
        cmd = [sys.executable, str(REPO / "launch/train.py"), *args, "--no-progress"]
        procs.append(
            subprocess.Popen(cmd, env=env, cwd=node, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outputs = [proc.communicate(timeout=timeout) for proc in procs]
    return [(proc.returncode, out, err) for proc, (out, err) in zip(procs, outputs)]


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


@contextlib.contextmanager
def fails_after(seconds: int, what: str):
    """Fail the test, instead of hanging the suite, when the block runs longer than `seconds` (a read that waits
    on a named pipe for good, a reader that takes minutes). pytest.fail, not an OSError such as TimeoutError,
    which the readers under test may catch and report as a refusal."""

    def expired(*_):
        pytest.fail(f"{what}: still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def require_system(condition: bool, reason: str) -> None:
    """Skip a test that needs a system service (Slurm, MPI, root) on a user's machine; fail in CI."""
    if condition:
        return
    if os.environ.get("NGPT_DS_REQUIRE_SYSTEM_TESTS") == "1":
        pytest.fail(f"required system component missing in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount_tmpfs(bytes, read_only=False) -> a fresh tmpfs of that size (root), unmounted after the test:
    a disk that fills up, or refuses writes, for real."""
    mounted = []

    def mount(size: int, read_only: bool = False):
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}" + (",ro" if read_only else ""), "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        require_system(proc.returncode == 0, f"mounting a small tmpfs needs root: {proc.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


@pytest.fixture
def mpi_rendezvous(monkeypatch) -> list:
    """An MPI job's rendezvous seen from rank 0 on a multi-node host: mpi4py imitated (COMM_WORLD.bcast records
    what rank 0 sends), the host's routable address 10.1.2.3 and a free port 29600 there. Returns the list of
    values broadcast."""
    import types

    from ngpt_ds import distributed

    sent: list = []

    class World:
        @staticmethod
        def bcast(value, root):
            sent.append(value)
            return value

    monkeypatch.setitem(sys.modules, "mpi4py", types.SimpleNamespace(MPI=types.SimpleNamespace(COMM_WORLD=World)))
    monkeypatch.setattr(distributed, "_routable_address", lambda: "10.1.2.3")
    monkeypatch.setattr(distributed, "_free_port", lambda addr: 29600)  # 10.1.2.3 is not this machine's
    return sent


@pytest.fixture(scope="module")
def slurm():
    """A real local Slurm cluster (tests/system/slurm_cluster.sh: munged, slurmctld and two slurmd as two
    fake nodes on this machine) for the tests of one module."""
    from system.harness import slurm_available, slurm_cluster

    ok, reason = slurm_available()
    require_system(ok, reason)
    with slurm_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A small prepared dataset (vocab 512) from CPython's pydoc topics text: no download."""
    import pydoc_data.topics

    from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset

    root = tmp_path_factory.mktemp("tiny_dataset")
    corpus = root / "corpus.jsonl"
    import json

    with corpus.open("w") as f:
        for text in pydoc_data.topics.topics.values():
            f.write(json.dumps({"text": text}) + "\n")
    return prepare_dataset(
        PrepareConfig(
            inputs=(str(corpus),), out=root / "data", vocab_size=512, val_fraction=0.1, workers=1, progress=False
        )
    )


def write_ds_config(path: Path, *, stage: int, bf16: bool, micro: int, accum: int, **extra) -> Path:
    import json

    config = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": bf16},
        "zero_optimization": {"stage": stage},
        **extra,
    }
    path.write_text(json.dumps(config))
    return path


def without_shard_hashes(data: Path) -> Path:
    """The prepared dataset `data` as an ngpt_ds before shard hashes wrote it: its meta.json without
    hash_block_bytes and the shards' sha256_blocks (rewritten in place)."""
    import json

    raw = json.loads((data / "meta.json").read_text())
    raw.pop("hash_block_bytes", None)
    for split in raw["splits"].values():
        for shard in split["shards"]:
            shard.pop("sha256_blocks", None)
    (data / "meta.json").write_text(json.dumps(raw))
    return data


def write_yaml(path: Path, model: dict, train: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"model": model, "train": train}))
    return path


def read_metrics(out_dir: Path, key: str = "train/loss") -> list[dict]:
    """The run's metrics.jsonl records that hold `key` (training log lines by default; "eval/loss": evaluations)."""
    import json

    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if key in r]


def peak_python_bytes(work) -> int:
    """The most memory Python objects held while `work()` ran (tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def tiny_ngpt() -> dict:
    """The `model:` section of the end-to-end runs: nGPT, 2 blocks of width 32 and 2 heads, 32 tokens
    of context (a fresh dict: a test may change its copy)."""
    return {"arch": "ngpt", "n_layer": 2, "n_embd": 32, "n_head": 2, "seq_len": 32}


def tiny_train(max_steps: int, **fields) -> dict:
    """The `train:` section of the end-to-end runs: lr 1e-2, a loss record every step, no evaluation and
    no periodic checkpoint (2 batches when a test turns evaluation on), and `fields` on top."""
    return {
        "max_steps": max_steps,
        "lr": 1e-2,
        "log_interval": 1,
        "eval_interval": 0,
        "eval_batches": 2,
        "checkpoint_interval": 0,
        "peak_tflops": 1.0,
        **fields,
    }


def write_run_configs(folder: Path, model: dict, train: dict) -> dict:
    """The two files of a launch test's run, in `folder`: {"yaml": model and train, "ds": ZeRO 2, fp32,
    micro-batch 4, no accumulation}."""
    return {
        "yaml": write_yaml(folder / "tiny.yaml", model, train),
        "ds": write_ds_config(folder / "z2.json", stage=2, bf16=False, micro=4, accum=1),
    }


def write_diverging_configs(folder: Path, **train) -> tuple[Path, Path]:
    """The two files of a run whose loss becomes nan within a few steps, in `folder`: nan.yaml (the GPT baseline at
    lr 1e30 without warm-up, 6 steps, a loss record every step; `train` on top) and ds.json (ZeRO 0, fp32,
    micro-batch 4, no accumulation, no gradient clipping)."""
    gpt = {**tiny_ngpt(), "arch": "gpt"}
    config = write_yaml(
        folder / "nan.yaml", gpt, {"max_steps": 6, "lr": 1e30, "warmup_steps": 0, "log_interval": 1, **train}
    )
    ds = write_ds_config(folder / "ds.json", stage=0, bf16=False, micro=4, accum=1, gradient_clipping=0.0)
    return config, ds


def stand_in_commands(folder: Path, commands: dict[str, str]) -> Path:
    """`folder` (made if missing) with an executable script per name in `commands` (name -> its text): the stand-in
    commands (srun, ssh, deepspeed, ...) a launcher test puts first on PATH. Returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in commands.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def train_flags(config, ds_config, data, out, *extra) -> list:
    """launch/train.py's options for one run, without the progress bar; `extra` after them."""
    return ["--config", config, "--deepspeed_config", ds_config, "--data", data, "--out", out, "--no-progress", *extra]


def train_cmd(config, ds_config, data, out, *extra) -> list:
    """launch/train.py (its full path) and train_flags: what `python`, torchrun or a launcher runs."""
    return [REPO / "launch/train.py", *train_flags(config, ds_config, data, out, *extra)]


def train_run(config, ds_config, data, out, *extra, nproc: int = 1, **kwargs) -> subprocess.CompletedProcess:
    """One run of launch/train.py to its end: plain `python` for one rank (torchrun's launcher would
    import torch once more, about 2 s of CPU per run), torchrun for more."""
    cmd = train_cmd(config, ds_config, data, out, *extra)
    if nproc == 1:
        return run([sys.executable, *cmd], **kwargs)
    return torchrun(*cmd, nproc=nproc, **kwargs)


REFERENCE_STEPS = 20
REFERENCE_TRAIN = tiny_train(REFERENCE_STEPS, eval_interval=10, checkpoint_interval=10, keep_checkpoints=3)


class ReferenceRuns:
    """The end-to-end runs that several test modules compare against, each trained once per session when
    a test first asks for it: tiny_ngpt() with REFERENCE_TRAIN on tiny_dataset, fp32.
      "z0_ws1": 1 rank, ZeRO 0, micro-batch 4 x 2 accumulation;
      "z2_ws2": 2 ranks, ZeRO 2, micro-batch 4 (the same global batch of 8).
    Tests only read them: one that trains on from a checkpoint copies it first."""

    DS = {"z0_ws1": (0, 2, 1), "z2_ws2": (2, 1, 2)}  # name -> ZeRO stage, accumulation, ranks

    def __init__(self, root: Path, data: Path):
        self.root, self.data = root, data
        self.config = write_yaml(root / "tiny.yaml", tiny_ngpt(), REFERENCE_TRAIN)
        self.ds = {
            name: write_ds_config(root / f"z{stage}.json", stage=stage, bf16=False, micro=4, accum=accum)
            for name, (stage, accum, _) in self.DS.items()
        }
        self._done: dict[str, Path] = {}

    def __getitem__(self, name: str) -> Path:
        if name not in self._done:
            out = self.root / name
            train_run(self.config, self.ds[name], self.data, out, nproc=self.DS[name][2])
            self._done[name] = out
        return self._done[name]


@pytest.fixture(scope="session")
def reference_runs(tmp_path_factory, tiny_dataset) -> ReferenceRuns:
    return ReferenceRuns(tmp_path_factory.mktemp("reference_runs"), tiny_dataset)


def start_ranks(args, *, nproc: int = 2, port: int | None = None, logs: Path | None = None) -> list[subprocess.Popen]:
    """`python args` once per rank, as plain processes with torch's env:// variables on this host: the
    way a launcher that does not tear a job down by itself starts them (srun without
    --kill-on-bad-exit, a container orchestrator), so that each rank's own exit status is seen.
    Each rank's output goes to `logs`/rank<N>.log, or without `logs` is captured as text."""
    port = free_port() if port is None else port
    ranks = []
    for rank in range(nproc):
        env = cpu_env(
            RANK=rank,
            WORLD_SIZE=nproc,
            LOCAL_RANK=rank,
            LOCAL_WORLD_SIZE=nproc,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        cmd = [sys.executable, *map(str, args)]
        if logs is None:
            ranks.append(
                subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            )
        else:
            with open(logs / f"rank{rank}.log", "w") as log:
                ranks.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
    return ranks


def run_ranks(args, *, nproc: int = 2, timeout: int = 300, **env) -> tuple[list[int], list[str]]:
    """`python args` once per rank, started as start_ranks starts them, with `env` added to each rank's, and waited
    for: (each rank's exit status, each rank's output, stdout and stderr together), in rank order."""
    port, ranks = free_port(), []
    for rank in range(nproc):
        rank_env = cpu_env(
            RANK=rank,
            WORLD_SIZE=nproc,
            LOCAL_RANK=rank,
            LOCAL_WORLD_SIZE=nproc,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            **env,
        )
        cmd = [sys.executable, *map(str, args)]
        ranks.append(
            subprocess.Popen(cmd, env=rank_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = [rank.communicate(timeout=timeout)[0] for rank in ranks]
    return [rank.returncode for rank in ranks], outputs


# ---- stopping a job: the configs tests/test_launch_stop_*.py share (their helpers: tests/stop_helpers.py) ----

STOP_STEPS = 200
STOP_TRAIN = tiny_train(STOP_STEPS, keep_checkpoints=2, dist_timeout_s=60)
STOP_GRACE_S = 20  # train.stop_grace_s: below both launchers' 30 s SIGKILL


@pytest.fixture(scope="module")
def stop_configs(tmp_path_factory) -> dict:
    """The stop tests' YAML (with a grace to save in, and without: "no_grace") and ZeRO-2 fp32 config."""
    tmp = tmp_path_factory.mktemp("stop_configs")
    configs = write_run_configs(tmp, tiny_ngpt(), {**STOP_TRAIN, "stop_grace_s": STOP_GRACE_S})
    configs["no_grace"] = write_yaml(tmp / "no_grace.yaml", tiny_ngpt(), {**STOP_TRAIN, "stop_grace_s": 0})
    return configs


def assert_complete(checkpoint: Path) -> None:
    """The checkpoint folder is whole: COMPLETE written, its manifest verified, no temporary folder left."""
    from ngpt_ds.train.manifest import verify  # the manifest in COMPLETE (README "Checkpoints")

    assert (checkpoint / "COMPLETE").is_file(), sorted(p.name for p in checkpoint.parent.iterdir())
    problem = verify(checkpoint)
    assert problem is None, problem
    assert not [p for p in checkpoint.parent.iterdir() if "tmp" in p.name]


RUN_LOCK_HOLDER = (
    "import sys\nfrom pathlib import Path\nfrom ngpt_ds.train import run_lock\n"
    "lock = run_lock.acquire(Path(sys.argv[1]))\nprint('held', flush=True)\nsys.stdin.readline()\nlock.release()\n"
)


@pytest.fixture
def hold():
    """hold(out): another process holds run_lock.acquire(out) until the test ends (POSIX locks are per process, so
    the holder cannot be the test's own); returns its pid."""
    procs = []

    def hold(out):
        proc = subprocess.Popen(
            [sys.executable, "-c", RUN_LOCK_HOLDER, str(out)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cpu_env(),
        )
        procs.append(proc)
        line = proc.stdout.readline()
        assert line == "held\n", proc.communicate()[1][-3000:]
        return proc.pid

    yield hold
    for proc in procs:
        proc.communicate("\n", timeout=60)
        assert proc.returncode == 0


@pytest.fixture
def handlers():
    """StopRequest installs signal handlers for the process (ngpt_ds.train.stopping): put pytest's back afterwards."""
    from ngpt_ds.train import stopping

    signals = stopping.URGENT_SIGNALS + stopping.WARNING_SIGNALS
    saved = {sig: signal.getsignal(sig) for sig in signals}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
