"""Universal-checkpoint resumes the other resume tests leave out, on gloo ranks: a ZeRO 3 checkpoint of one
rank resumed on 2 (each parameter, rows of the vocabulary matrices included, cut again between the ranks),
and a ZeRO 1 checkpoint of 2 ranks resumed at ZeRO 2 on one. Both continue the uninterrupted run (same
global batch of 4 windows, fp32) within float32 rounding of the loss, with the masters on the sphere."""

import pytest

from conftest import read_metrics, tiny_ngpt, tiny_train, train_run, write_ds_config, write_yaml

STEPS = 6
GLOBAL_BATCH = 4


def _ds(tmp_path, stage, ranks):
    return write_ds_config(
        tmp_path / f"z{stage}_dp{ranks}.json", stage=stage, bf16=False, micro=2, accum=GLOBAL_BATCH // (2 * ranks)
    )


def _resume_and_compare(tmp_path, data, saved_stage, saved_ranks, stage, ranks):
    config = write_yaml(tmp_path / "run.yaml", tiny_ngpt(), tiny_train(STEPS, checkpoint_interval=3))
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    train_run(config, _ds(tmp_path, saved_stage, saved_ranks), data, reference, nproc=saved_ranks)
    proc = train_run(
        config,
        _ds(tmp_path, stage, ranks),
        data,
        resumed,
        "--resume",
        reference / "checkpoints" / "step_00000003",
        nproc=ranks,
    )
    assert sum("universal checkpoint" in line for line in proc.stdout.splitlines()) == 1, proc.stdout
    want = {m["step"]: m["train/loss"] for m in read_metrics(reference)}
    got = read_metrics(resumed)
    assert [m["step"] for m in got] == [4, 5, 6]
    assert [m["train/loss"] for m in got] == pytest.approx([want[s] for s in (4, 5, 6)], abs=1e-6)
    assert max(m["ngpt/max_norm_deviation"] for m in got) < 1e-6


def test_zero3_checkpoint_of_one_rank_resumes_on_two(tmp_path, tiny_dataset):
    _resume_and_compare(tmp_path, tiny_dataset, 3, 1, 3, 2)


def test_zero1_checkpoint_of_two_ranks_resumes_at_zero2_on_one(tmp_path, tiny_dataset):
    _resume_and_compare(tmp_path, tiny_dataset, 1, 2, 2, 1)
