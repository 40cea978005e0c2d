"""Fault (session 31): a checkpoint that `--resume auto` (the default) chose and that does not fit the run was
refused as "--resume <path>: ...", an argument the user never typed, so the run's own --out did not look like
the cause. It now says that --out holds a run and auto continues it from its newest checkpoint; a --resume the
user named keeps its own words."""

import sys

from conftest import run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml


def test_auto_names_the_out_folder_and_a_named_resume_its_own_path(tmp_path, tiny_dataset):
    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=2, accum=1)
    out = tmp_path / "run"
    run(
        [sys.executable, *train_cmd(write_yaml(tmp_path / "a.yaml", tiny_ngpt(), tiny_train(2)), ds, tiny_dataset, out)]
    )
    checkpoint = out / "checkpoints" / "step_00000002"
    reseeded = write_yaml(tmp_path / "b.yaml", tiny_ngpt(), tiny_train(4, seed=7))
    why = f"{checkpoint}: train.seed = 1234 in the checkpoint, 7 now: the seed orders the training data"

    auto = run([sys.executable, *train_cmd(reseeded, ds, tiny_dataset, out)], check=False)
    # The old code: "error: --resume <checkpoint>: train.seed = 1234 ..." with no --resume on the command line.
    assert auto.returncode == 2 and "Traceback" not in auto.stderr, auto.stderr[-3000:]
    expected = (
        f"error: --out {out} holds a run, and --resume auto (the default) continues it from its newest checkpoint, "
    )
    assert expected + why in auto.stderr

    named = run([sys.executable, *train_cmd(reseeded, ds, tiny_dataset, out), "--resume", checkpoint], check=False)
    assert named.returncode == 2 and f"error: --resume {why}" in named.stderr, named.stderr[-3000:]
