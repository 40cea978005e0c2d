"""One writer per --out (fault: two trainers on the same --out both ran and interleaved checkpoints).

The holder here is this test process, through the trainer's own lock (ngpt_ds.train.run_lock), so
the second trainer meets a live holder for as long as it runs. Its two ranks must both exit 2
naming the holder, before writing anything. (A stale lock of a SIGKILLed trainer is taken over:
tests/test_checkpoint_integrity.py.)
"""

import os
import socket
import subprocess
import sys

from conftest import REPO, cpu_env, free_port, write_ds_config, write_yaml

MODEL = {"arch": "ngpt", "n_layer": 2, "n_embd": 32, "n_head": 2, "seq_len": 32}
TRAIN = {
    "max_steps": 4,
    "lr": 1e-2,
    "log_interval": 1,
    "eval_interval": 0,
    "eval_batches": 2,
    "checkpoint_interval": 2,
    "keep_checkpoints": 3,
    "peak_tflops": 1.0,
    "dist_timeout_s": 60,
}


def test_second_trainer_on_a_locked_out_exits_2_on_every_rank_naming_the_holder(tmp_path, tiny_dataset):
    from ngpt_ds.train.run_lock import acquire

    out = tmp_path / "run"
    holder = acquire(out)
    try:
        config = write_yaml(tmp_path / "tiny.yaml", MODEL, TRAIN)
        ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
        port = free_port()
        ranks = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "launch/train.py"),
                    "--config",
                    str(config),
                    "--deepspeed_config",
                    str(ds),
                    "--data",
                    str(tiny_dataset),
                    "--out",
                    str(out),
                    "--no-progress",
                ],
                env=cpu_env(
                    RANK=rank,
                    WORLD_SIZE=2,
                    LOCAL_RANK=rank,
                    LOCAL_WORLD_SIZE=2,
                    MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=port,
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
            for rank in range(2)
        ]
        results = [proc.communicate(timeout=300) for proc in ranks]
    finally:
        holder.release()
    expected = (
        f"error: --out {out} is in use by another trainer (host={socket.gethostname()} pid={os.getpid()}; "
        f"lock file {out / 'train.lock'}). Wait for it to finish or stop it, or choose another --out"
    )
    for rank, (proc, (_, stderr)) in enumerate(zip(ranks, results)):
        assert proc.returncode == 2, (rank, stderr[-3000:])
        assert expected in stderr.splitlines(), (rank, stderr[-3000:])
        assert "Traceback" not in stderr
    assert sorted(p.name for p in out.iterdir()) == ["train.lock"]  # nothing written by the second trainer
