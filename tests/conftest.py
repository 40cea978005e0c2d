"""Shared test fixtures and helpers: run configs, the reference runs' fixture, and skips that CI turns into failures.

Starting processes (run, torchrun, start_ranks, train_run, ...) lives in tests/launching.py, the tiny runs' config
files (tiny_ngpt, tiny_train, write_yaml, write_ds_config) in tests/run_configs.py, and the folders shared by the
xdist workers with the reference runs (shared_folder, ReferenceRuns) in tests/shared_runs.py; their names are
re-exported here, so tests import them from conftest as before. The stop tests' configs are at the end;
their other helpers are in tests/stop_helpers.py. The fixtures of the Hugging Face folders tests alter
(random_hf_export, random_hf_export_logits, hf_export_copy, hf_saved) are tests/hf_exports.py's, registered here."""

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from corpus_trees import patterns_tried  # noqa: F401 (a fixture, for every test module)
from hf_exports import hf_export_copy, hf_saved, random_hf_export, random_hf_export_logits  # noqa: F401 (fixtures, for every test module)
from launching import (  # noqa: F401 (re-exported: the tests import these from conftest)
    REPO,
    convert_universal,
    cpu_env,
    free_port,
    run,
    run_in_session,
    run_launch,
    run_limited,
    run_lm_eval,
    run_mpirun,
    run_ranks,
    run_sbatch,
    slurm_env,
    stand_in_commands,
    start_ranks,
    torchrun,
    train_cmd,
    train_flags,
    train_on_two_nodes,
    train_run,
    wait_while_running,
)
from nobody_user import nobody_alone  # noqa: F401 (re-exported)
from run_configs import tiny_ngpt, tiny_train, write_ds_config, write_yaml  # noqa: F401 (re-exported)
from shared_runs import (  # noqa: F401 (re-exported: the tests import these from conftest)
    REFERENCE_STEPS,
    REFERENCE_TRAIN,
    ReferenceRuns,
    shared_folder,
    shared_key,
    shared_root,
)

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
    "test_nccl37_resume_collectives.py",
    "test_nccl31_trace_new_paths.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


FILE_TIMES_SHOWN = 40


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The FILE_TIMES_SHOWN test files that took longest (setup, call and teardown of all their tests, fixtures
    included) and the total: what each file costs in every CI log, where --durations names single tests only.
    Under pytest-xdist the controller runs this hook and holds every worker's reports; a worker prints nothing."""
    if hasattr(config, "workerinput"):  # an xdist worker: its reports reach the controller, which sums them
        return
    seconds: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) in ("setup", "call", "teardown") and hasattr(report, "duration"):
                path = report.nodeid.split("::", 1)[0]
                seconds[path] = seconds.get(path, 0.0) + report.duration
    if not seconds:
        return
    slowest = sorted(seconds.items(), key=lambda item: item[1], reverse=True)[:FILE_TIMES_SHOWN]
    terminalreporter.write_sep("=", f"slowest {len(slowest)} test files (setup + call + teardown)")
    for path, spent in slowest:
        terminalreporter.write_line(f"{spent:9.2f}s {path}")
    terminalreporter.write_line(f"{sum(seconds.values()):9.2f}s in all {len(seconds)} files")


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


@contextlib.contextmanager
def logged_warnings(logger_name: str):
    """The messages of the WARNING (and worse) records logger `logger_name` gets inside the block, as a list
    filled while it runs: a handler on that logger itself, since ngpt_ds's loggers may not propagate to the
    root (and caplog) once ngpt_ds.log is set up."""
    import logging

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger(logger_name)
    handler = Keep(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def require_system(condition: bool, reason: str) -> None:
    """Skip a test that needs a system service (Slurm, MPI, root) on a user's machine; fail in CI."""
    if condition:
        return
    if os.environ.get("NGPT_DS_REQUIRE_SYSTEM_TESTS") == "1":
        pytest.fail(f"required system component missing in CI: {reason}")
    pytest.skip(reason)


def unmappable_stack() -> int:
    """A `ulimit -s`, in bytes, under which no thread of a process can map its stack on this machine: Linux's default
    overcommit (vm.overcommit_memory 0) and its strict mode (2) refuse a mapping larger than RAM plus swap, so 64 GiB,
    or twice RAM plus swap rounded up to a power of two where that is more (a machine of 128 GiB would map 64 GiB).
    Under overcommit 1 every such mapping succeeds and the test cannot make the fault: skipped, failed in CI."""
    try:
        mode = Path("/proc/sys/vm/overcommit_memory").read_text().strip()
        kib = {line.split(":")[0]: int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()}
    except (OSError, ValueError, IndexError):
        mode, kib = "", {}
    require_system(mode in ("0", "2"), f"vm.overcommit_memory is {mode or 'unreadable'}, not 0 or 2")
    memory = (kib.get("MemTotal", 0) + kib.get("SwapTotal", 0)) << 10
    return max(64 << 30, 1 << (2 * memory - 1).bit_length())


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
    what rank 0 sends), the host's routable address 10.1.2.3 and a port 29600 rank 0 listens on there. Returns the
    list of values broadcast."""
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
    monkeypatch.setattr(distributed, "free_port", lambda addr: 29600)  # 10.1.2.3 is not this machine's
    monkeypatch.setattr(distributed, "_listen_for_rendezvous", lambda addr: 29600)  # no real server
    monkeypatch.setattr(distributed, "_mpi_agreed", None)  # agreed once a process: each test is a new job
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

    with corpus.open("w") as f:
        for text in pydoc_data.topics.topics.values():
            f.write(json.dumps({"text": text}) + "\n")
    return prepare_dataset(
        PrepareConfig(
            inputs=(str(corpus),), out=root / "data", vocab_size=512, val_fraction=0.1, workers=1, progress=False
        )
    )


def without_shard_hashes(data: Path) -> Path:
    """The prepared dataset `data` as an ngpt_ds before shard hashes wrote it: its meta.json without
    hash_block_bytes and the shards' sha256_blocks (rewritten in place)."""

    raw = json.loads((data / "meta.json").read_text())
    raw.pop("hash_block_bytes", None)
    for split in raw["splits"].values():
        for shard in split["shards"]:
            shard.pop("sha256_blocks", None)
    (data / "meta.json").write_text(json.dumps(raw))
    return data


def read_metrics(out_dir: Path, key: str = "train/loss") -> list[dict]:
    """The run's metrics.jsonl records that hold `key` (training log lines by default; "eval/loss": evaluations).

    Only whole lines, those ending in a newline: a test polling a running trainer may read the file while a record
    is being written, and the half of it there is not JSON (json.decoder.JSONDecodeError: Unterminated string)."""

    lines = (out_dir / "metrics.jsonl").read_text().split("\n")[:-1]  # the last piece: "" or a line in writing
    records = [json.loads(line) for line in lines if line]
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


def train_two_nodes_on_their_own_data(tmp_path: Path, data: tuple[Path, Path]) -> list[tuple[int, str, str]]:
    """3 steps of tiny_ngpt() (ZeRO 0, fp32, micro-batch 4, into tmp_path/out) as ranks 0 and 1 of one job, each in a
    folder of its own that stands in for a node (train_on_two_nodes), where --data data is data[rank]: node-local
    copies of a dataset that may differ. Returns each rank's (exit status, stdout, stderr)."""
    yaml = write_yaml(tmp_path / "run.yaml", tiny_ngpt(), tiny_train(3))
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=4, accum=1)

    def setup(rank, node):
        (node / "data").symlink_to(data[rank])

    argv = ["--config", yaml, "--deepspeed_config", ds, "--data", "data", "--out", tmp_path / "out"]
    return train_on_two_nodes(tmp_path, setup, *argv)


def run_ranks_forked(args, *, nproc: int = 2, timeout: int = 300, **env) -> tuple[list[int], list[str]]:
    """run_ranks's job (`python args` once per rank with torch's env:// variables and `env`; each rank's exit status
    and output, in rank order), its ranks forked from the xdist worker's fork server (tests/forked_cli.py: torch,
    DeepSpeed and ngpt_ds imported once, about 4.4 s of CPU less a rank, most of a job that stops at its startup).
    args[0] is the script; a rank's output is its stdout, then its stderr. As torchrun, the other ranks get 30 s
    once one has failed, then are killed. For the tests of what the ranks do and say, not of a launcher or an entry
    script's own start (run_ranks, in fresh interpreters)."""
    from forked_cli import run_forked_ranks
    from launching import rank_env

    port = free_port()
    envs = [rank_env(rank, nproc, port, **env) for rank in range(nproc)]
    ranks = run_forked_ranks(Path(args[0]), list(args[1:]), envs, cwd=REPO, timeout=timeout)
    return [rank.returncode for rank in ranks], [rank.stdout + rank.stderr for rank in ranks]


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory, tiny_dataset) -> ReferenceRuns:
    """The reference runs, each copied for this test module when it first asks for it (ReferenceRuns)."""
    return ReferenceRuns(tmp_path_factory, tiny_dataset)


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


@pytest.fixture
def regex_scans(monkeypatch) -> list[str]:
    """The names of the files the corpus checks run the slow regex scan on (local_inputs.longest_text_document), in
    the order they do: the quick check (fits_text_documents) should leave it to files over the bound."""
    from ngpt_ds.data import local_inputs

    calls: list[str] = []
    exact = local_inputs.longest_text_document

    def counted(file: str, *args, **kwargs):
        calls.append(os.path.basename(file))
        return exact(file, *args, **kwargs)

    monkeypatch.setattr(local_inputs, "longest_text_document", counted)
    return calls
