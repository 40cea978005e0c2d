"""Stopping an `mpirun` job (launch/multinode.sh mpi) ends in a checkpoint, for real: 2 ranks on gloo.

The fault: Open MPI 4.1's mpirun, on SIGTERM (or Ctrl-C), sends its ranks SIGCONT, waits
odls_base_sigkill_timeout, sends SIGTERM, waits that long again, then SIGKILLs them. The default, 1 s,
killed the ranks in the middle of the stop's save: no checkpoint, a step_N.tmp-save folder left, no
summary.json. multinode.sh now passes train.stop_grace_s + 5 s (read from the --config YAML file).
"""

import importlib.util
import json
import shutil
import signal
import subprocess
import time

from stop_helpers import HANG_GUARD_S, kill_leftovers

from conftest import REPO, assert_complete, cpu_env, require_system, tiny_ngpt, tiny_train, write_run_configs

GRACE_S = 5  # train.stop_grace_s: mpirun waits 10 s before its SIGTERM and 10 s more before its SIGKILL
# A model whose save takes over a second on CPU (14.6M parameters: 6 blocks of width 384), and a record every
# 10 steps: mpirun reads no output of its ranks while it waits, and a rank that fills the pipe (64 KiB) blocks.
MODEL = {**tiny_ngpt(), "n_embd": 384, "n_head": 6, "n_layer": 6}
TRAIN = tiny_train(5000, log_interval=10, dist_timeout_s=30, stop_grace_s=GRACE_S)


def test_mpirun_stopped_with_sigterm_saves_its_checkpoint(tiny_dataset, tmp_path):
    require_system(
        shutil.which("mpirun") is not None and importlib.util.find_spec("mpi4py") is not None,
        "OpenMPI or mpi4py not installed: bash launch/setup.sh --test",
    )
    configs = write_run_configs(tmp_path, MODEL, TRAIN)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    out, log = tmp_path / "run", tmp_path / "mpirun.log"
    env = cpu_env()
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "STOP_GRACE_S"):
        env.pop(var, None)
    args = ["--config", configs["yaml"], "--deepspeed_config", configs["ds"], "--data", tiny_dataset, "--out", out]
    with open(log, "w") as sink:  # multinode.sh execs mpirun: this pid is mpirun's
        mpirun = subprocess.Popen(
            ["bash", REPO / "launch/multinode.sh", "mpi", hostfile, *args, "--no-progress"],
            env=env,
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        metrics = out / "metrics.jsonl"
        while not (metrics.exists() and '"train/loss"' in metrics.read_text()):  # step 10 is logged
            assert mpirun.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.1)
        mpirun.send_signal(signal.SIGTERM)
        mpirun.wait(timeout=HANG_GUARD_S)
    finally:
        kill_leftovers(out, mpirun)
    text = log.read_text()
    summary_file = out / "summary.json"
    assert summary_file.is_file(), (sorted(p.name for p in (out / "checkpoints").iterdir()), text[-4000:])
    summary = json.loads(summary_file.read_text())
    assert summary["status"] == "stopped" and summary["step"] >= 10, summary
    assert f"stopping at step {summary['step']} (signal SIGTERM); checkpoint saved" in text, text[-4000:]
    assert_complete(out / "checkpoints" / f"step_{summary['step']:08d}")
