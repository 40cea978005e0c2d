"""What a run that diverges says about the checkpoints it leaves."""

import sys

from conftest import run, tiny_ngpt, train_cmd, write_diverging_configs, write_ds_config, write_yaml


def test_a_divergence_before_the_first_checkpoint_says_there_is_none(tmp_path, tiny_dataset):
    """Fault: a NaN loss before the first save said 'Checkpoints up to step 2 are intact in
    <out>/checkpoints (--resume auto continues from the newest)', a folder that did not exist: the
    rerun starts from step 0. (The GPT baseline at lr 1e30 and no clipping: nan within a few steps.)"""
    config, ds = write_diverging_configs(tmp_path, checkpoint_interval=100)
    out = tmp_path / "out"
    proc = run([sys.executable, *train_cmd(config, ds, tiny_dataset, out)], check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: the training loss became nan at step "), error
    assert error.endswith(
        "check the data. No checkpoint was saved yet (train.checkpoint_interval 100): running the same command "
        "again starts from step 0"
    ), error
    assert not (out / "checkpoints").exists()


def test_a_divergence_after_resuming_from_another_folder_names_that_checkpoint(tmp_path, tiny_dataset):
    """Fault: a run resumed with --resume <another run's checkpoint> that diverged before its own first save
    said 'Checkpoints up to step 4 are intact in <out>/checkpoints (--resume auto continues from the newest,
    step_00000002)': that folder did not exist, no checkpoint of step 3 or 4 anywhere, and --resume auto
    there starts from step 0. The one to rerun from is the checkpoint given to --resume."""
    gpt = {**tiny_ngpt(), "arch": "gpt"}
    train = {"max_steps": 2, "lr": 1e-2, "warmup_steps": 0, "checkpoint_interval": 100, "log_interval": 1}
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=4, accum=1, gradient_clipping=0.0)
    first = tmp_path / "first"
    proc = run([sys.executable, *train_cmd(write_yaml(tmp_path / "two.yaml", gpt, train), ds, tiny_dataset, first)])
    step2 = first / "checkpoints" / "step_00000002"
    config = write_yaml(tmp_path / "nan.yaml", gpt, {**train, "max_steps": 8, "lr": 1e30})
    out = tmp_path / "out"
    proc = run([sys.executable, *train_cmd(config, ds, tiny_dataset, out), "--resume", step2], check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: the training loss became nan at step "), error
    assert error.endswith(
        f"check the data. No checkpoint was saved in {out / 'checkpoints'} yet: running the same command again "
        f"starts from {step2} again (its --resume)"
    ), error
    assert not (out / "checkpoints").exists()
