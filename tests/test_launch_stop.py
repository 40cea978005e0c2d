"""Every way a job is stopped saves a checkpoint, and nothing outlives its launcher (README
"Stopping a run").

Real 2-rank jobs (tiny nGPT, CPU, gloo) are stopped the way an operator or a scheduler does it:
SIGTERM and SIGINT to `deepspeed` and to `torchrun`, to the launcher's pid alone and to its process
group; Ctrl-C pressed again and again during the save; SIGKILL of the launcher itself; the Docker
image's entrypoint getting `docker stop`'s SIGTERM; Slurm's `scancel --signal`. Each test checks the
launcher's documented exit status, a complete checkpoint at the step the run stopped, that no
trainer process is left and the rendezvous port is free again, and the log's stop line.

To keep the cost down the stop paths form one chain: each job resumes from the checkpoint the
previous stop path left (copied into its own folder), so it is at the same time the rerun of the
previous path, and it must log exactly the losses of one uninterrupted run (CPU, fp32) for every
step it trains. The last test resumes the last stop to the end. A path whose test runs alone starts
from scratch, and `test_zz_last_stop_resumes_to_the_end` resumes it.
"""

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO, cpu_env, read_metrics, require_system, torchrun, write_ds_config, write_yaml

STEPS = 200
MODEL = {"arch": "ngpt", "n_layer": 2, "n_embd": 32, "n_head": 2, "seq_len": 32}
TRAIN = {
    "max_steps": STEPS,
    "lr": 1e-2,
    "log_interval": 1,
    "eval_interval": 0,
    "eval_batches": 2,
    "checkpoint_interval": 0,
    "keep_checkpoints": 2,
    "peak_tflops": 1.0,
    "dist_timeout_s": 60,
}
GRACE_S = 20  # train.stop_grace_s: below both launchers' 30 s SIGKILL
HANG_GUARD_S = 240  # a hang guard only: a job that never stops fails here instead of blocking the suite
STOP_EXIT_UNSAVED = 75  # launch/train.py: stopped, but the grace was too short to save (README)

CHAIN = {"dir": None, "step": 0}
"""The run folder and step of the last stop that left a verified checkpoint."""


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stop_configs")
    return {
        "yaml": write_yaml(tmp / "tiny.yaml", MODEL, {**TRAIN, "stop_grace_s": GRACE_S}),
        "no_grace": write_yaml(tmp / "no_grace.yaml", MODEL, {**TRAIN, "stop_grace_s": 0}),
        "ds": write_ds_config(tmp / "z2.json", stage=2, bf16=False, micro=4, accum=1),
    }


def train_args(configs, data, out, yaml="yaml"):
    return [
        "launch/train.py",
        "--config",
        configs[yaml],
        "--deepspeed_config",
        configs["ds"],
        "--data",
        data,
        "--out",
        out,
        "--no-progress",
    ]


def start_from_chain(out: Path) -> int:
    """Copy the run folder of the last stop into `out` (not its lock); the step to resume from, or 0."""
    if CHAIN["dir"] is None:
        return 0
    shutil.copytree(CHAIN["dir"], out, ignore=shutil.ignore_patterns("train.lock"))
    return CHAIN["step"]


def losses(out) -> dict[int, float]:
    """step -> train loss of the run folder (a replayed step keeps its last value)."""
    if not (out / "metrics.jsonl").exists():
        return {}
    return {m["step"]: m["train/loss"] for m in read_metrics(out)}


@pytest.fixture(scope="module")
def reference(configs, tiny_dataset, tmp_path_factory):
    """The uninterrupted run every stopped-and-resumed one must reproduce."""
    out = tmp_path_factory.mktemp("stop_reference") / "run"
    torchrun(*train_args(configs, tiny_dataset, out), nproc=2, timeout=600)
    result = losses(out)
    assert sorted(result) == list(range(1, STEPS + 1))
    return result


def trainers(out) -> list[psutil.Process]:
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
    seen = {*known, *trainers(out)}
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        seen |= set(trainers(out))
        left = [p for p in seen if running(p)]
        if not left:
            return
        if time.monotonic() > deadline:
            for proc in left:
                proc.kill()
            pytest.fail(f"trainer processes still running {HANG_GUARD_S} s after the stop: {[p.pid for p in left]}")
        time.sleep(0.1)


def running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def rendezvous_port() -> int:
    """A free port below the ephemeral range (32768 and up on Linux), so that after the job no
    other process on this busy machine gets it by chance and the check below means something. Drawn
    from the OS's randomness: a test session seeding `random` would otherwise give two concurrent
    sessions the same ports."""
    while True:
        port = random.SystemRandom().randrange(10000, 20000)  # not the seedable generator: tests seed it
        if port_is_free(port):
            return port


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
    deadline = time.monotonic() + HANG_GUARD_S
    while max(losses(out), default=0) < after + 3:
        assert launcher.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"no step past {after + 3} logged: " + log.read_text()[-4000:]
        time.sleep(0.05)


def launch(how: str, configs, data, out, port: int, log: Path) -> subprocess.Popen:
    args = [str(a) for a in train_args(configs, data, out)]
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
        cmd, cwd=REPO, env=cpu_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def children_named(proc: subprocess.Popen, marker: str) -> list[psutil.Process]:
    return [c for c in psutil.Process(proc.pid).children(recursive=True) if marker in " ".join(c.cmdline())]


# (launcher, whom the signal goes to, signal, the launcher's own exit status as Popen reports it)
# deepspeed: DeepSpeed 0.19.8's runner has no handler for local runs, so it dies of the signal at once
#   (-15 / -2); its ranks save and exit on their own. Killing its per-node launch.py leaves the runner
#   with a negative status, which it reports as 0.
# torchrun: forwards the signal to its ranks, waits for them, then exits 1 (a SignalException).
# entrypoint: forwards to everything it started, waits for all of it, and exits like its command.
PATHS = [
    ("deepspeed", "pid", "SIGTERM", -15),
    ("deepspeed", "pid", "SIGINT", -2),
    ("deepspeed", "group", "SIGTERM", -15),
    ("deepspeed", "group", "SIGINT-repeated", -2),  # Ctrl-C pressed again and again during the save
    ("torchrun", "pid", "SIGTERM", 1),
    ("torchrun", "pid", "SIGINT", 1),
    ("torchrun", "group", "SIGTERM", 1),
    ("torchrun", "group", "SIGINT", 1),
    ("deepspeed", "launch.py", "SIGKILL", 0),  # the per-node launcher dies: its ranks must notice
    ("torchrun", "pid", "SIGKILL", -9),
    ("entrypoint", "pid", "SIGTERM", 143),  # docker stop
    ("entrypoint", "pid", "SIGINT", 130),  # Ctrl-C in docker run -it
]


@pytest.mark.parametrize("how,target,sig,expected_rc", PATHS, ids=["-".join(p[:3]) for p in PATHS])
def test_stop_path_saves_a_complete_checkpoint_and_the_rerun_resumes(
    how, target, sig, expected_rc, configs, tiny_dataset, reference, tmp_path
):
    out = tmp_path / "run"
    start = start_from_chain(out)
    port, log = rendezvous_port(), tmp_path / "job.log"
    proc = launch(how, configs, tiny_dataset, out, port, log)
    try:
        wait_for_steps(out, start, proc, log)
        signum = getattr(signal, sig.split("-")[0])
        known = trainers(out)
        if target == "pid":
            os.kill(proc.pid, signum)
        elif target == "group":
            os.killpg(proc.pid, signum)
        else:
            children_named(proc, "deepspeed.launcher.launch")[0].send_signal(signum)
        repeat_deadline = time.monotonic() + HANG_GUARD_S
        while sig.endswith("-repeated") and trainers(out) and time.monotonic() < repeat_deadline:
            time.sleep(0.2)
            for rank in trainers(out):
                rank.send_signal(signum)
        rc = proc.wait(timeout=HANG_GUARD_S)
        if how == "entrypoint":  # it leaves only when all it started has ended, as PID 1 must
            assert not [p for p in known if running(p)], "the entrypoint exited while its ranks still ran"
        wait_until_gone(out, known)
    finally:
        for left in trainers(out):
            left.kill()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert rc == expected_rc, text[-4000:]
    # The launchers may print their own tracebacks (torchrun's SignalException, the deepspeed
    # runner's KeyboardInterrupt); a rank never does.
    assert not re.search(r'File "[^"]*(launch/train\.py|ngpt_ds/)', text), text[-4000:]
    assert port_released(port), sockets_on(port)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped", (summary, text[-4000:])
    stop_step = summary["step"]
    assert start + 3 <= stop_step < STEPS
    assert re.search(rf"stopping at step {stop_step} \(", text), text[-4000:]
    checkpoint = out / "checkpoints" / f"step_{stop_step:08d}"
    assert summary["checkpoint"] == str(checkpoint)
    assert_complete(checkpoint)
    if start:
        assert f"resumed from {out / 'checkpoints' / f'step_{start:08d}'} at step {start}" in text, text[-4000:]
    logged = losses(out)
    assert sorted(logged) == list(range(1, stop_step + 1))
    assert [logged[s] for s in range(start + 1, stop_step + 1)] == [
        reference[s] for s in range(start + 1, stop_step + 1)
    ]
    CHAIN.update(dir=out, step=stop_step)


def ranks_importing_torch(proc: subprocess.Popen) -> bool:
    """Both ranks have loaded torch's library: launch/train.py notes its parent just before that, so
    from here on (imports, process group, engine, about 5 s) a dead parent must be noticed."""
    try:
        ranks = [
            p for p in children_named(proc, "launch/train.py") if "deepspeed.launcher" not in " ".join(p.cmdline())
        ]
        return len(ranks) == 2 and all(any("libtorch" in m.path for m in rank.memory_maps()) for rank in ranks)
    except psutil.Error:
        return False


def test_launcher_killed_during_the_startup_still_stops_its_ranks(configs, tiny_dataset, tmp_path):
    """DeepSpeed's launch.py is SIGKILLed while its ranks still import torch and build the engine:
    they were started by it, so they stop at their first step, with a checkpoint, and leave."""
    out, log, port = tmp_path / "run", tmp_path / "job.log", rendezvous_port()
    proc = launch("deepspeed", configs, tiny_dataset, out, port, log)
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not ranks_importing_torch(proc):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.01)
        known = trainers(out)
        children_named(proc, "deepspeed.launcher.launch")[0].kill()
        assert proc.wait(timeout=HANG_GUARD_S) == 0  # the runner reports its child's -9 as success
        wait_until_gone(out, known)
    finally:
        for left in trainers(out):
            left.kill()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["step"] < STEPS, (summary, text[-4000:])
    # Rank 0 prints the reason: its own watch's, or that of the rank that noticed first. A launcher
    # killed before the watch starts is already gone when the watch looks (a loaded machine makes the
    # startup slow): it is then named by its pid alone.
    assert re.search(
        rf"stopping at step {summary['step']} \((its launcher DeepSpeed's launch.py \(pid \d+\) exited"
        r"|the parent process \(pid \d+\) exited|another rank was asked to stop)\)",
        text,
    ), text[-4000:]
    assert_complete(out / "checkpoints" / f"step_{summary['step']:08d}")
    assert port_released(port), sockets_on(port)


def assert_complete(checkpoint: Path) -> None:
    from ngpt_ds.train import checkpoint as ckpt

    assert (checkpoint / "COMPLETE").is_file(), sorted(p.name for p in checkpoint.parent.iterdir())
    if hasattr(ckpt, "verify"):  # the manifest in COMPLETE (README "Checkpoints")
        assert ckpt.verify(checkpoint) is None, ckpt.verify(checkpoint)
    assert not [p for p in checkpoint.parent.iterdir() if "tmp" in p.name]


def test_grace_too_short_keeps_the_previous_checkpoint_and_exits_75(configs, tiny_dataset, reference, tmp_path):
    """train.stop_grace_s 0: a SIGTERM is obeyed at once, without a save. The previous complete
    checkpoint is left as it was, and the exit status says no checkpoint was written."""
    out = tmp_path / "run"
    start = start_from_chain(out)
    before = sorted(p.name for p in (out / "checkpoints").iterdir()) if start else []
    port, procs = rendezvous_port(), []
    for rank in range(2):  # plain processes, so each rank's own exit status is seen
        env = cpu_env(
            RANK=rank, WORLD_SIZE=2, LOCAL_RANK=rank, LOCAL_WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=port
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, *map(str, train_args(configs, tiny_dataset, out, "no_grace"))],
                cwd=REPO,
                env=env,
                stdout=open(tmp_path / f"rank{rank}.log", "w"),
                stderr=subprocess.STDOUT,
            )
        )
    try:
        wait_for_steps(out, start, procs[0], tmp_path / "rank0.log")
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=HANG_GUARD_S) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = (tmp_path / "rank0.log").read_text()
    assert codes == [STOP_EXIT_UNSAVED, STOP_EXIT_UNSAVED], text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    assert re.search(r"no time left to save \(train\.stop_grace_s = 0", text), text[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped-unsaved"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before  # nothing written, nothing lost
    if start:
        assert_complete(out / "checkpoints" / f"step_{start:08d}")
    assert port_released(port), sockets_on(port)


def test_zz_last_stop_resumes_to_the_end(configs, tiny_dataset, reference, tmp_path):
    out = tmp_path / "run"
    start = start_from_chain(out)
    assert start > 0, "no stop path left a checkpoint to resume"
    proc = torchrun(*train_args(configs, tiny_dataset, out), nproc=2, timeout=600)
    assert f"resumed from {out / 'checkpoints' / f'step_{start:08d}'} at step {start}" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["step"]) == ("finished", STEPS)
    assert losses(out) == reference


# ---- Slurm: scancel --signal ----------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm():
    from system.harness import slurm_available, slurm_cluster

    ok, reason = slurm_available()
    require_system(ok, reason)
    with slurm_cluster() as cluster:
        yield cluster


def test_scancel_signal_int_checkpoints_requeues_and_resumes(slurm, configs, tiny_dataset, reference, tmp_path):
    """`scancel --signal=INT` reaches every task through slurmstepd. One node with two tasks, so the
    rendezvous is bound to 127.0.0.1."""
    out, log = tmp_path / "run", tmp_path / "job.log"
    job = slurm.submit(
        REPO / "launch/slurm/train.sbatch",
        *train_args(configs, tiny_dataset, out)[1:],
        sbatch_args=["--nodes", 1, "--ntasks-per-node", 2, "--gpus-per-node", 0, f"--output={log}"],
        env=cpu_env(),
        cwd=REPO,
    )
    deadline = time.monotonic() + HANG_GUARD_S
    while max(losses(out), default=0) < 3:
        assert time.monotonic() < deadline, f"job {job} never logged a step: {slurm.job(job)}"
        assert slurm.job(job)["JobState"] in ("PENDING", "RUNNING"), log.read_text()[-3000:]
        time.sleep(0.1)
    slurm.signal(job, "INT")
    info = slurm.wait(job, 600)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, text[-3000:])
    assert "master 127.0.0.1:" in text
    stopped = re.search(r"stopping at step (\d+) \(signal SIGINT\)", text)
    assert stopped, text[-3000:]
    stop_step = int(stopped.group(1))
    assert f"resumed from {out / 'checkpoints' / f'step_{stop_step:08d}'} at step {stop_step}" in text
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    assert losses(out) == reference


# ---- the rendezvous address and the free-port probe -------------------------------------------


def test_single_node_slurm_job_binds_the_rendezvous_to_loopback():
    from ngpt_ds.distributed import discover

    env = {
        "SLURM_PROCID": "1",
        "SLURM_NTASKS": "2",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_ID": "7",
        "SLURM_TASKS_PER_NODE": "2",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_JOB_NODELIST": "gpu01",
    }
    dist_env = discover(env)
    assert (dist_env.master_addr, dist_env.master_port) == ("127.0.0.1", 20007)
    two_nodes = discover({**env, "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[01-02]"})
    assert two_nodes.master_addr == "gpu01"


@pytest.mark.parametrize("single_host", [True, False])
def test_free_port_probe_binds_the_address_the_rendezvous_uses(single_host, monkeypatch):
    """mpirun without MASTER_ADDR: rank 0 picks the address and a port. The port must be free on
    that address, not on another one."""
    from ngpt_ds import distributed

    routable = "10.11.12.13"
    monkeypatch.setattr(distributed, "_routable_address", lambda: routable)
    probed = []
    real_bind = socket.socket.bind

    def recording_bind(sock, address):
        probed.append(address[0])
        return real_bind(sock, ("127.0.0.1", 0))  # the test machine does not own 10.11.12.13

    monkeypatch.setattr(socket.socket, "bind", recording_bind)
    addr, port = distributed.rendezvous_address(single_host=single_host)
    assert addr == ("127.0.0.1" if single_host else routable)
    assert probed == [addr] and port > 0


def test_single_host_deepspeed_hostfile_binds_the_rendezvous_to_loopback(tmp_path):
    (tmp_path / "one").write_text("gpu-a slots=2\n")
    (tmp_path / "two").write_text("gpu-a slots=2\ngpu-b slots=2\n")
    env = cpu_env(DRY_RUN=1)
    env.pop("MASTER_ADDR", None)
    for hostfile, master in (("one", "127.0.0.1"), ("two", "gpu-a")):
        proc = subprocess.run(
            ["bash", REPO / "launch/multinode.sh", "deepspeed", tmp_path / hostfile, "--out", "x"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        words = proc.stdout.split()
        assert proc.returncode == 0 and words[words.index("--master_addr") + 1] == master, proc.stdout + proc.stderr


def test_the_docker_image_runs_its_command_under_the_tested_entrypoint():
    """`docker stop` signals PID 1: that must be launch/entrypoint.py (tested above as the parent of
    the default command), with the README's main command as the default CMD."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    workdir = re.findall(r"^WORKDIR (\S+)$", text, re.M)[-1]
    assert entrypoint == ["python3", f"{workdir}/launch/entrypoint.py"]
    cmd = json.loads(re.findall(r"^CMD (.+)$", text, re.M)[-1])
    assert cmd[0] == "deepspeed"  # the runner whose ranks outlive it: the case the entrypoint waits for
