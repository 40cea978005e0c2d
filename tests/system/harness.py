"""System services for the launch tests, started by the tests themselves and always stopped.

- `slurm_cluster()`: a local Slurm cluster (munged, slurmctld, two slurmd as fake nodes
  ngptds1/ngptds2) through tests/system/slurm_cluster.sh, torn down by PID files.
- `local_sshd()`: an sshd on 127.0.0.1 with its own host and client keys, for DeepSpeed's
  pdsh + ssh launcher; stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from launching import free_port

HERE = Path(__file__).resolve().parent
SLURM_SCRIPT = HERE / "slurm_cluster.sh"
SLURM_DIR = os.environ.get("NGPT_SLURM_DIR", "/run/ngpt_ds_slurm")
FAKE_NODES = ("ngptds1", "ngptds2")


def slurm_available() -> tuple[bool, str]:
    missing = [tool for tool in ("munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(tool)]
    if missing:
        return False, f"Slurm/munge not installed ({', '.join(missing)} missing): bash launch/setup.sh --test"
    if os.geteuid() != 0:
        return False, "the local Slurm cluster needs root"
    return True, ""


class SlurmCluster:
    def __init__(self):
        self.env = {"SLURM_CONF": f"{SLURM_DIR}/slurm.conf"}

    def _run(self, *cmd: str, env: dict | None = None, timeout: float = 30) -> str:
        proc = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, env={**(env or os.environ), **self.env}
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc.stdout

    def submit(self, script: Path, *args, sbatch_args=(), env: dict, cwd: Path) -> str:
        proc = subprocess.run(
            ["sbatch", "--parsable", *map(str, sbatch_args), str(script), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=cwd,
            env={**env, **self.env},
        )
        if proc.returncode != 0:
            raise RuntimeError(f"sbatch failed: {proc.stderr}")
        return proc.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, NodeList, ...)."""
        text = self._run("scontrol", "show", "job", "-o", job_id)
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def signal(self, job_id: str, sig: str) -> None:
        self._run("scancel", f"--signal={sig}", job_id)

    def wait(self, job_id: str, timeout: float, release_requeued: bool = True) -> dict[str, str]:
        """Wait until the job has ended. A requeued job waits ~2 min for its BeginTime (Slurm's
        credential lifetime): release it sooner, which a user could do with the same scontrol
        command. Not at once: slurmd compares the new launch credential's creation time with the
        requeue's revocation in whole seconds, and a launch within the same second is killed as
        "Job credential revoked"."""
        deadline = time.monotonic() + timeout
        released_restarts = set()
        nudge_at = None
        while time.monotonic() < deadline:
            info = self.job(job_id)
            state = info.get("JobState", "")
            if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"):
                return info
            restart = info.get("Restarts")
            if (
                release_requeued
                and state == "PENDING"
                and info.get("Reason") == "BeginTime"
                and restart not in released_restarts
            ):
                self._run("scontrol", "update", f"JobId={job_id}", "StartTime=now+5")
                released_restarts.add(restart)
                nudge_at = time.monotonic() + 6
            elif nudge_at is not None and time.monotonic() > nudge_at:
                # A job whose begin time has passed waits for the next scheduling pass (the backfill's, up to 30 s
                # later: 26-29 s in the scancel stop test); an update of the job runs one now.
                nudge_at = None
                if state == "PENDING":
                    self._run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
            time.sleep(0.5)
        subprocess.run(["scancel", job_id], env={**os.environ, **self.env}, timeout=30)
        raise TimeoutError(f"Slurm job {job_id} did not end within {timeout:.0f} s: {self.job(job_id)}")


@contextlib.contextmanager
def slurm_cluster(lock_timeout_s: float = 900):
    """Bring the cluster up (after bringing any previous instance down) and always down again.
    A lock file serializes test sessions on one machine, so one never takes down another's."""
    import fcntl

    with open(f"{SLURM_DIR}.lock", "w") as lock:
        deadline = time.monotonic() + lock_timeout_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another test session holds {SLURM_DIR}.lock") from None
                time.sleep(1)
        with _slurm_cluster_up() as cluster:
            yield cluster


@contextlib.contextmanager
def _slurm_cluster_up():
    try:
        subprocess.run(["bash", str(SLURM_SCRIPT), "up"], check=True, capture_output=True, text=True, timeout=120)
    except subprocess.CalledProcessError as err:
        subprocess.run(["bash", str(SLURM_SCRIPT), "down"], capture_output=True, timeout=120)
        raise RuntimeError(f"local Slurm cluster did not start:\n{err.stdout}{err.stderr}") from None
    try:
        yield SlurmCluster()
    finally:
        subprocess.run(["bash", str(SLURM_SCRIPT), "down"], capture_output=True, timeout=120)


def sshd_available() -> tuple[bool, str]:
    missing = [tool for tool in ("pdsh", "ssh", "ssh-keygen") if not shutil.which(tool)]
    if not Path("/usr/sbin/sshd").exists():
        missing.append("sshd")
    if missing:
        return False, f"{', '.join(missing)} not installed: bash launch/setup.sh --test"
    if os.geteuid() != 0:
        return False, "sshd for the pdsh test runs as root"
    return True, ""


@contextlib.contextmanager
def local_sshd(workdir: Path):
    """An sshd on 127.0.0.1:PORT accepting one fresh key. Yields the ssh options a client needs."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / name)], check=True)
    shutil.copy(workdir / "client_key.pub", workdir / "authorized_keys")
    port = free_port()  # sshd listens on it a moment later: not a port the kernel hands out (tests/launching.py)
    (workdir / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {workdir / 'host_key'}\n"
        f"AuthorizedKeysFile {workdir / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {workdir / 'sshd.pid'}\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    log = open(workdir / "sshd.log", "w")
    proc = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(workdir / "sshd_config")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        options = (
            f"-p {port} -i {workdir / 'client_key'} -o StrictHostKeyChecking=no "
            "-o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR"
        )
        deadline = time.monotonic() + 20
        while True:
            check = subprocess.run(["ssh", *options.split(), "127.0.0.1", "true"], capture_output=True, timeout=20)
            if check.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {(workdir / 'sshd.log').read_text()}")
            time.sleep(0.2)
        yield options
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
