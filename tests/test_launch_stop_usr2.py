"""SIGUSR2 is a stop request, as SIGUSR1 is (README "Stopping a run"): Slurm's `--signal=USR2@T` before a
time limit, `scancel --signal=USR2`, launch/entrypoint.py's forwarding. The fault: the README and the
entrypoint named it a request to checkpoint and stop, but no rank handled it, and its default action
killed the rank ("User defined signal 2", exit -12) without a checkpoint."""

import json
import signal
import subprocess
import sys

from stop_helpers import signal_one_trainer

from conftest import REPO, assert_complete, cpu_env


def test_usr2_during_the_startup_is_kept_for_the_stop():
    """ngpt_ds.train.early_signals, as launch/train.py's first line installs it (no torch: a fast check)."""
    code = (
        "import os, signal\n"
        "from ngpt_ds.train import early_signals\n"
        "early_signals.record()\n"
        "os.kill(os.getpid(), signal.SIGUSR2)\n"
        "os.kill(os.getpid(), signal.SIGUSR1)\n"
        "print([signal.Signals(s).name for s in early_signals.take()])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=cpu_env(), cwd=REPO, capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == (0, "['SIGUSR2', 'SIGUSR1']\n"), proc.stderr


def test_usr2_during_training_stops_with_a_checkpoint(stop_configs, tiny_dataset, tmp_path):
    out, log = tmp_path / "run", tmp_path / "rank0.log"
    metrics = out / "metrics.jsonl"

    def training(_proc) -> bool:  # a step is logged
        return metrics.exists() and '"train/loss"' in metrics.read_text()

    code = signal_one_trainer(stop_configs, tiny_dataset, out, log, training, signal.SIGUSR2)
    text = log.read_text()
    assert code == 0, (code, text[-4000:])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and 1 <= summary["step"] < summary["max_steps"], summary
    assert f"stopping at step {summary['step']} (signal SIGUSR2); checkpoint saved" in text, text[-4000:]
    assert_complete(out / "checkpoints" / f"step_{summary['step']:08d}")
