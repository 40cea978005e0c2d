"""Ctrl-C outside the training loop: one `interrupted` line and exit status 130, never a traceback.

Fault found by the newcomer review (s17): ngpt_ds.cli.run did not catch KeyboardInterrupt, so Ctrl-C
printed Python's traceback: 20 frames from generate.py while it streamed (exit 1), 14 to 61 lines from
train.py during its startup. Every test sends a real SIGINT to a real process."""

from __future__ import annotations

import signal
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import psutil
from stop_helpers import signal_when

from conftest import REPO, tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml


def _interrupt_when(cmd: list, ready: Callable[[subprocess.Popen], bool], log_dir: Path) -> tuple[int, str, str]:
    """Start `cmd`, send it SIGINT once `ready(process)` holds; (exit status, stdout, stderr)."""
    out_log, err_log = log_dir / "stdout.txt", log_dir / "stderr.txt"
    code = signal_when(cmd, ready, signal.SIGINT, out_log, err_log)
    return code, out_log.read_text(), err_log.read_text()


def test_ctrl_c_while_generate_streams_says_interrupted_and_exits_130(reference_runs, tmp_path):
    run = reference_runs["z0_ws1"]
    stdout = tmp_path / "stdout.txt"
    prompt = "The"
    cmd = [sys.executable, REPO / "launch/generate.py", run, "--prompt", prompt, "--max-new-tokens", "1000000"]
    cmd += ["--ignore-eos", "--seed", "0", "--device", "cpu"]

    def streaming(_proc) -> bool:  # generated text has reached stdout, past the echoed prompt
        return stdout.exists() and len(stdout.read_text(errors="replace")) > len(prompt) + 20

    code, out, err = _interrupt_when(cmd, streaming, tmp_path)
    assert code == 130, err[-4000:]
    assert "Traceback" not in err, err[-4000:]
    assert err.endswith("interrupted\n"), err[-4000:]
    assert out.startswith(prompt) and len(out) > len(prompt) + 20  # what was streamed stays


def test_ctrl_c_during_the_trainer_startup_says_interrupted_and_keeps_the_folder_whole(tiny_dataset, tmp_path):
    """Ctrl-C once config.yaml is written, while the engine starts (SIGINT is a stop request only once
    the training loop's handler is in place): exit 130, no traceback, the folder holds what it held (config.yaml,
    train.lock) and its lock is free for the next run."""
    from ngpt_ds.train import run_lock

    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(50))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    out = tmp_path / "run"
    logs = tmp_path / "logs"
    logs.mkdir()
    cmd = [sys.executable, REPO / "launch/train.py", *train_flags(config, ds, tiny_dataset, out)]
    code, stdout, err = _interrupt_when(cmd, lambda _proc: (out / "config.yaml").exists(), logs)
    assert code == 130, stdout[-3000:] + err[-4000:]
    assert "Traceback" not in err + stdout, err[-4000:]
    assert err.endswith("interrupted\n"), err[-4000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        "run_id.json",
        "train.lock",
    ]  # run_id.json: the run id, made at the first start
    lock = run_lock.acquire(out)  # free: the next run starts
    lock.release()


def test_ctrl_c_while_the_ngpt_train_console_script_imports_torch_says_interrupted(tiny_dataset, tmp_path):
    """Fault: ngpt_ds.cli.train.main imported torch and DeepSpeed (seconds) before ngpt_ds.cli.run, which
    catches Ctrl-C; launch/train.py wraps main in its own handler, the `ngpt-train` console script does not,
    so Ctrl-C there printed a traceback and exited 1. SIGINT lands once libtorch is mapped, mid-import."""
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(50))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    out = tmp_path / "run"
    logs = tmp_path / "logs"
    logs.mkdir()
    script = Path(sysconfig.get_path("scripts")) / "ngpt-train"
    assert script.is_file(), f"{script} is not installed: run `pip install -e .`"

    def importing_torch(proc) -> bool:  # none of the trainer's startup has run yet: no config.yaml
        maps = psutil.Process(proc.pid).memory_maps()
        return any("libtorch" in m.path for m in maps) and not (out / "config.yaml").exists()

    code, stdout, err = _interrupt_when([script, *train_flags(config, ds, tiny_dataset, out)], importing_torch, logs)
    assert code == 130, stdout[-3000:] + err[-4000:]
    assert "Traceback" not in err + stdout, err[-4000:]
    assert err.endswith("interrupted\n"), err[-4000:]
