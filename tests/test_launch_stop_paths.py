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
from scratch, and `test_zz_last_stop_resumes_to_the_end` resumes it. The chain and the helpers are
in tests/stop_helpers.py, the configs in conftest.py: test_launch_stop_startup_and_grace.py, which
runs after this file, starts its too-short-grace stop from the chain's last checkpoint too.
"""

import json
import os
import re
import signal
import time

import pytest
from stop_helpers import (
    HANG_GUARD_S,
    STOP_CHAIN,
    StepWatch,
    children_named,
    kill_leftovers,
    launch_stoppable,
    losses_by_step,
    port_released,
    rendezvous_port,
    sockets_on,
    start_from_chain,
    still_running,
    stop_train_args,
    trainer_processes,
    wait_for_steps,
    wait_until_gone,
)

from conftest import (
    REPO,
    STOP_STEPS,
    assert_complete,
    cpu_env,
    torchrun,
)


@pytest.fixture(scope="module")
def reference(stop_configs, tiny_dataset, tmp_path_factory):
    """The uninterrupted run every stopped-and-resumed one must reproduce."""
    out = tmp_path_factory.mktemp("stop_reference") / "run"
    torchrun(*stop_train_args(stop_configs, tiny_dataset, out), nproc=2, timeout=600)
    result = losses_by_step(out)
    assert sorted(result) == list(range(1, STOP_STEPS + 1))
    return result


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
    how, target, sig, expected_rc, stop_configs, tiny_dataset, reference, tmp_path
):
    out = tmp_path / "run"
    start = start_from_chain(out)
    port, log = rendezvous_port(), tmp_path / "job.log"
    proc = launch_stoppable(how, stop_configs, tiny_dataset, out, port, log)
    try:
        wait_for_steps(out, start, proc, log)
        signum = getattr(signal, sig.split("-")[0])
        known = trainer_processes(out)
        if target == "pid":
            os.kill(proc.pid, signum)
        elif target == "group":
            os.killpg(proc.pid, signum)
        else:
            children_named(proc, "deepspeed.launcher.launch")[0].send_signal(signum)
        repeat_deadline = time.monotonic() + HANG_GUARD_S
        while sig.endswith("-repeated") and trainer_processes(out) and time.monotonic() < repeat_deadline:
            time.sleep(0.2)
            for rank in trainer_processes(out):
                rank.send_signal(signum)
        rc = proc.wait(timeout=HANG_GUARD_S)
        if how == "entrypoint":  # it leaves only when all it started has ended, as PID 1 must
            assert not [p for p in known if still_running(p)], "the entrypoint exited while its ranks still ran"
        wait_until_gone(out, known)
    finally:
        kill_leftovers(out, proc)
    text = log.read_text()
    assert rc == expected_rc, text[-4000:]
    # The launchers may print their own tracebacks (torchrun's SignalException, the deepspeed
    # runner's KeyboardInterrupt); a rank never does.
    assert not re.search(r'File "[^"]*(launch/train\.py|ngpt_ds/)', text), text[-4000:]
    assert port_released(port), sockets_on(port)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped", (summary, text[-4000:])
    stop_step = summary["step"]
    assert start + 3 <= stop_step < STOP_STEPS
    assert re.search(rf"stopping at step {stop_step} \(", text), text[-4000:]
    checkpoint = out / "checkpoints" / f"step_{stop_step:08d}"
    assert summary["checkpoint"] == str(checkpoint)
    assert_complete(checkpoint)
    if start:
        assert f"resumed from {out / 'checkpoints' / f'step_{start:08d}'} at step {start}" in text, text[-4000:]
    logged = losses_by_step(out)
    assert sorted(logged) == list(range(1, stop_step + 1))
    assert [logged[s] for s in range(start + 1, stop_step + 1)] == [
        reference[s] for s in range(start + 1, stop_step + 1)
    ]
    STOP_CHAIN.update(dir=out, step=stop_step)


def test_zz_last_stop_resumes_to_the_end(stop_configs, tiny_dataset, reference, tmp_path):
    out = tmp_path / "run"
    start = start_from_chain(out)
    assert start > 0, "no stop path left a checkpoint to resume"
    proc = torchrun(*stop_train_args(stop_configs, tiny_dataset, out), nproc=2, timeout=600)
    assert f"resumed from {out / 'checkpoints' / f'step_{start:08d}'} at step {start}" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["step"]) == ("finished", STOP_STEPS)
    assert losses_by_step(out) == reference


# ---- Slurm: scancel --signal ----------------------------------------------------------------


def test_scancel_signal_int_checkpoints_requeues_and_resumes(slurm, stop_configs, tiny_dataset, reference, tmp_path):
    """`scancel --signal=INT` reaches every task through slurmstepd. One node with two tasks, so the
    rendezvous is bound to 127.0.0.1. The job resumes from the chain's last checkpoint (from scratch when it
    runs alone): the steps before it are the other paths' and are compared with the reference all the same."""
    out, log = tmp_path / "run", tmp_path / "job.log"
    start = start_from_chain(out)
    job = slurm.submit(
        REPO / "launch/slurm/train.sbatch",
        *stop_train_args(stop_configs, tiny_dataset, out)[1:],
        sbatch_args=["--nodes", 1, "--ntasks-per-node", 2, "--gpus-per-node", 0, f"--output={log}"],
        env=cpu_env(),
        cwd=REPO,
    )
    deadline, steps, asked = time.monotonic() + HANG_GUARD_S, StepWatch(out), 0.0
    while steps.last_step() < start + 3:
        assert time.monotonic() < deadline, f"job {job} never logged a step: {slurm.job(job)}"
        if time.monotonic() > asked + 1.0:  # scontrol, a process each time: once a second, not at each poll
            assert slurm.job(job)["JobState"] in ("PENDING", "RUNNING"), log.read_text()[-3000:]
            asked = time.monotonic()
        time.sleep(0.1)
    slurm.signal(job, "INT")
    info = slurm.wait(job, 600)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, text[-3000:])
    assert "master 127.0.0.1:" in text
    stopped = re.search(r"stopping at step (\d+) \(signal SIGINT\)", text)
    assert stopped, text[-3000:]
    stop_step = int(stopped.group(1))
    assert start + 3 <= stop_step < STOP_STEPS
    assert f"resumed from {out / 'checkpoints' / f'step_{stop_step:08d}'} at step {stop_step}" in text
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    assert losses_by_step(out) == reference


def test_the_docker_image_runs_its_command_under_the_tested_entrypoint():
    """`docker stop` signals PID 1: that must be launch/entrypoint.py (tested above as the parent of
    the default command), with the README's main command as the default CMD."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    workdir = re.findall(r"^WORKDIR (\S+)$", text, re.M)[-1]
    assert entrypoint == ["python3", f"{workdir}/launch/entrypoint.py"]
    cmd = json.loads(re.findall(r"^CMD (.+)$", text, re.M)[-1])
    assert cmd[0] == "deepspeed"  # the runner whose ranks outlive it: the case the entrypoint waits for
