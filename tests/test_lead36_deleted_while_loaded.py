"""A checkpoint of another run that its retention deletes while this run loads it is one line, not a traceback.

The fault (found by red36): run B resumed from run A's step 2; between B's checks of the files and DeepSpeed's read,
A (train.keep_checkpoints: 1) saved step 4 and deleted step 2; B stopped in a 40-frame traceback ending in DeepSpeed's
`assert len(self.ckpt_list) > 0` (exit 1), naming neither the cause nor the checkpoint A holds now. B is a real
trainer process paused right after the optimizer shards' check (the last check before DeepSpeed reads), A a real run.
"""

import subprocess
import sys

from conftest import cpu_env, run, tiny_ngpt, tiny_train, train_cmd, wait_while_running, write_ds_config, write_yaml

PAUSED_TRAIN = """
import runpy, sys, time
from pathlib import Path
from ngpt_ds.train import shard_groups_check

paused, go = Path(sys.argv[1]), Path(sys.argv[2])
check = shard_groups_check.check_on_all_ranks


def check_then_wait(*args, **kwargs):
    check(*args, **kwargs)
    paused.touch()
    while not go.exists():
        time.sleep(0.05)


shard_groups_check.check_on_all_ranks = check_then_wait
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_checkpoint_deleted_by_its_runs_retention_during_the_load_names_the_newest_one(tmp_path, tiny_dataset):
    run_a, run_b = tmp_path / "A", tmp_path / "B"
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(8, checkpoint_interval=2, keep_checkpoints=1))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    run([sys.executable, *train_cmd(config, ds, tiny_dataset, run_a, "--max-steps", "2")])
    checkpoints = run_a / "checkpoints"
    script, paused, go = tmp_path / "paused_train.py", tmp_path / "paused", tmp_path / "go"
    script.write_text(PAUSED_TRAIN)
    resume = train_cmd(config, ds, tiny_dataset, run_b, "--resume", checkpoints / "step_00000002")
    b = subprocess.Popen(
        [sys.executable, script, paused, go, *map(str, resume)],
        env=cpu_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_while_running(b, paused.exists, "run B reaching its load")
        run([sys.executable, *train_cmd(config, ds, tiny_dataset, run_a, "--resume", "auto", "--max-steps", "4")])
        assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_00000004"]  # retention deleted step 2
        go.touch()
        _, err = b.communicate(timeout=300)
    finally:
        if b.poll() is None:
            b.kill()
            b.communicate()
    # old code: exit 1 and a traceback ending in "assert len(self.ckpt_list) > 0" / "AssertionError"
    assert b.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: --resume {checkpoints / 'step_00000002'}: it was deleted while this run loaded it (a training run's "
        "retention (train.keep_checkpoints) deletes its older checkpoints as it saves newer ones). The newest "
        f"complete checkpoint beside it is {checkpoints / 'step_00000004'}: resume from it, or pass that run's "
        f"folder {run_a}, which takes its newest"
    ]
    assert not (run_b / "checkpoints").exists() or not list((run_b / "checkpoints").glob("step_*"))
