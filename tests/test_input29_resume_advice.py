"""Resuming a pipeline checkpoint at another tensor-parallel size: the refusal's advice must name the layout
the checkpoint resumes at.

Fault (input29, 2 gloo ranks): a checkpoint saved with train.pipeline_parallel_size 2 (1 tensor-parallel rank)
resumed with train.tensor_parallel_size 2 was refused at startup with "Resume with train.tensor_parallel_size 1
on 1 rank(s)". Following it, the run was refused again ("Resume with train.pipeline_parallel_size 2 on 2
rank(s)"): the tensor-parallel advice left out the saved pipeline stages and counted too few ranks."""

from __future__ import annotations

from conftest import tiny_ngpt, tiny_train, train_run, write_ds_config, write_yaml


def test_a_pipeline_checkpoint_resumed_at_tensor_parallel_2_is_told_its_whole_layout(tmp_path, tiny_dataset):
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=4, accum=1)
    pipeline = write_yaml(tmp_path / "pp.yaml", tiny_ngpt(), tiny_train(2, pipeline_parallel_size=2))
    train_run(pipeline, ds, tiny_dataset, tmp_path / "run", nproc=2)
    tensor = write_yaml(tmp_path / "tp.yaml", tiny_ngpt(), tiny_train(4, tensor_parallel_size=2))
    result = train_run(tensor, ds, tiny_dataset, tmp_path / "run", nproc=2, check=False)
    assert result.returncode == 1 and "(exitcode: 2)" in result.stderr, result.stderr[-3000:]
    assert (
        "Resume with train.tensor_parallel_size 1 and train.pipeline_parallel_size 2 on 2 rank(s)" in result.stderr
    ), result.stderr[-3000:]
