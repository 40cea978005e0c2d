"""A multi-rank trainer keeps its train.lock while it trains (fault: rank 0 read <out>/train.lock through a new
descriptor in lock_run's check that every rank sees the same --out, and closing that descriptor dropped every
fcntl lock rank 0 held on the file (POSIX record locks belong to the process, not to the descriptor): from its
first step on, any second trainer on the same --out took the lock over, 'copied from another run folder')."""

import time

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import run_lock

from conftest import start_ranks, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml


def test_two_rank_trainer_still_holds_its_lock_once_training(tmp_path, tiny_dataset):
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(100000, dist_timeout_s=60))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    out = tmp_path / "run"
    (tmp_path / "logs").mkdir()
    ranks = start_ranks(train_cmd(config, ds, tiny_dataset, out), logs=tmp_path / "logs")
    try:
        metrics = out / "metrics.jsonl"
        for _ in range(3000):  # until a step is logged: training, past lock_run and every startup check
            if metrics.exists() and metrics.read_text().count("\n") >= 1:
                break
            assert all(proc.poll() is None for proc in ranks), (tmp_path / "logs" / "rank0.log").read_text()[-3000:]
            time.sleep(0.1)
        else:
            pytest.fail("the trainer logged no step: " + (tmp_path / "logs" / "rank0.log").read_text()[-3000:])
        with pytest.raises(NgptConfigError) as refused:
            run_lock.acquire(out).release()  # before: took over the running trainer's lock, with a note
        holder = f"host={run_lock.socket.gethostname()} pid={ranks[0].pid}"
        assert str(refused.value) == (
            f"--out {out} is in use by another trainer ({holder}; lock file {out / 'train.lock'}). Wait for it to "
            "finish or stop it, or choose another --out"
        )
        with run_lock.unless_in_use(out) as ours:
            assert ours is False
    finally:
        for proc in ranks:
            proc.kill()
        for proc in ranks:
            proc.wait()
