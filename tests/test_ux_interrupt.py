"""Ctrl-C outside the training loop: one `interrupted` line and exit status 130, never a traceback.

Fault found by the newcomer review (s17): ngpt_ds.cli.run did not catch KeyboardInterrupt, so Ctrl-C
printed Python's traceback: 20 frames from generate.py while it streamed (exit 1), 14 to 61 lines from
train.py during its startup. Both tests send a real SIGINT to a real process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from conftest import REPO, cpu_env, tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml

HANG_GUARD_S = 240


def _interrupt_when(cmd: list, ready, log_dir) -> tuple[int, str, str]:
    """Start `cmd`, send it SIGINT once `ready()` holds; (exit status, stdout, stderr)."""
    out_log, err_log = log_dir / "stdout.txt", log_dir / "stderr.txt"
    with open(out_log, "w") as out, open(err_log, "w") as err:
        proc = subprocess.Popen([str(c) for c in cmd], env=cpu_env(), cwd=REPO, stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, err_log.read_text()[-4000:]
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, out_log.read_text(), err_log.read_text()


def test_ctrl_c_while_generate_streams_says_interrupted_and_exits_130(reference_runs, tmp_path):
    run = reference_runs["z0_ws1"]
    stdout = tmp_path / "stdout.txt"
    prompt = "The"
    cmd = [sys.executable, REPO / "launch/generate.py", run, "--prompt", prompt, "--max-new-tokens", "1000000"]
    cmd += ["--ignore-eos", "--seed", "0", "--device", "cpu"]

    def streaming() -> bool:  # generated text has reached stdout, past the echoed prompt
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
    code, stdout, err = _interrupt_when(cmd, lambda: (out / "config.yaml").exists(), logs)
    assert code == 130, stdout[-3000:] + err[-4000:]
    assert "Traceback" not in err + stdout, err[-4000:]
    assert err.endswith("interrupted\n"), err[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "train.lock"]
    lock = run_lock.acquire(out)  # free: the next run starts
    lock.release()
