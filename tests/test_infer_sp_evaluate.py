"""`ngpt-evaluate` on a sequence-parallel run: at 1x seq_len with the default windows it scores the trainer's
evaluation windows, so its loss is the trainer's validation loss (as test_infer_evaluate checks for ZeRO-2 x 2)."""

import json

import pytest

from conftest import REPO, torchrun, write_ds_config, write_yaml

MODEL = {"arch": "ngpt", "n_layer": 2, "n_embd": 32, "n_head": 2, "seq_len": 32}
TRAIN = {
    "max_steps": 2,
    "lr": 1e-2,
    "log_interval": 1,
    "eval_interval": 2,
    "eval_batches": 2,
    "checkpoint_interval": 2,
    "peak_tflops": 1.0,
    "sequence_parallel_size": 2,
}
MICRO = 2


def test_evaluate_uses_the_trainers_windows_for_a_sequence_parallel_run(tmp_path, tiny_dataset):
    """Fault: the loader took DeepSpeed's dp_world_size (data x sequence ranks under sequence parallelism) for
    the data-parallel size, so on a 2-rank sp=2 run ngpt-evaluate scored 8 windows instead of the trainer's
    2 x 2 x 1 = 4: loss 6.2374 against the trainer's 6.2468."""
    from ngpt_ds.infer import evaluate, load

    config = write_yaml(tmp_path / "sp.yaml", MODEL, TRAIN)
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=MICRO, accum=1)
    out = tmp_path / "run"
    torchrun(
        REPO / "launch/train.py", "--config", config, "--deepspeed_config", ds, "--out", out, "--data", tiny_dataset
    )
    trainer_val_loss = json.loads((out / "summary.json").read_text())["val_loss"]
    loaded = load(out, device="cpu")
    (one_x,) = evaluate(loaded, tiny_dataset, multiples=[1])
    assert (one_x.windows, one_x.loss) == (TRAIN["eval_batches"] * MICRO * 1, pytest.approx(trainer_val_loss, abs=2e-6))
    assert loaded.info["data_parallel"] == 1 and loaded.info["world_size"] == 2
