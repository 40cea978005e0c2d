"""Activation checkpointing (train.activation_checkpointing: blocks) under the layouts that re-run a block's
forward differently: 2 pipeline stages (DeepSpeed's pipeline engine, one block per stage) and ZeRO 3
(the recomputation gathers the partitioned parameters again). Both against one rank without
checkpointing: the same losses, and the masters on the sphere after every step (2 gloo ranks)."""

import pytest

from conftest import read_metrics, tiny_ngpt, tiny_train, train_run, write_ds_config, write_yaml

STEPS = 3


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_dataset):
    """1 rank, ZeRO 1, fp32, micro-batch 2 x 4 accumulation (global batch 8), no checkpointing."""
    work = tmp_path_factory.mktemp("ckpt_single")
    config = write_yaml(work / "t.yaml", tiny_ngpt(), tiny_train(STEPS))
    ds = write_ds_config(work / "z1.json", stage=1, bf16=False, micro=2, accum=4)
    train_run(config, ds, tiny_dataset, work / "out", forked=True)
    return read_metrics(work / "out")


def _checkpointed(tmp_path, data, ds, **train):
    config = write_yaml(
        tmp_path / "ckpt.yaml", tiny_ngpt(), tiny_train(STEPS, activation_checkpointing="blocks", **train)
    )
    train_run(config, ds, data, tmp_path / "out", nproc=2)
    return read_metrics(tmp_path / "out")


def _assert_on_sphere(metrics):
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    assert max(m["ngpt/max_norm_deviation"] for m in metrics) < 1e-6


def test_pipeline_stages_with_block_checkpointing_reproduce_one_rank_bit_for_bit(tmp_path, tiny_dataset, single):
    ds = write_ds_config(tmp_path / "z1.json", stage=1, bf16=False, micro=2, accum=4)
    piped = _checkpointed(tmp_path, tiny_dataset, ds, pipeline_parallel_size=2)
    _assert_on_sphere(piped)
    assert [m["train/loss"] for m in piped] == [m["train/loss"] for m in single]


def test_zero3_with_block_checkpointing_matches_one_rank(tmp_path, tiny_dataset, single):
    ds = write_ds_config(tmp_path / "z3.json", stage=3, bf16=False, micro=2, accum=2)
    sharded = _checkpointed(tmp_path, tiny_dataset, ds)
    _assert_on_sphere(sharded)
    # 2 ranks average two float32 gradients where one rank accumulates them: equal to float32 rounding.
    assert [m["train/loss"] for m in sharded] == pytest.approx([m["train/loss"] for m in single], abs=1e-6)
