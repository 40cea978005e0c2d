"""One writer per --out (fault: two trainers on the same --out both ran and interleaved checkpoints).

The holder here is this test process, through the trainer's own lock (ngpt_ds.train.run_lock), so
the second trainer meets a live holder for as long as it runs. Its two ranks must both exit 2
naming the holder, before writing anything. (A stale lock of a SIGKILLed trainer is taken over:
tests/test_checkpoint_integrity.py.)
"""

import os
import socket

from conftest import start_ranks, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml

MODEL = tiny_ngpt()
TRAIN = tiny_train(4, checkpoint_interval=2, keep_checkpoints=3, dist_timeout_s=60)


def test_second_trainer_on_a_locked_out_exits_2_on_every_rank_naming_the_holder(tmp_path, tiny_dataset):
    from ngpt_ds.train.run_lock import acquire

    out = tmp_path / "run"
    holder = acquire(out)
    try:
        config = write_yaml(tmp_path / "tiny.yaml", MODEL, TRAIN)
        ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
        ranks = start_ranks(train_cmd(config, ds, tiny_dataset, out))
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
