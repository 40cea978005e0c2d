"""Fault (scale30): a checkpoint saved at tensor-parallel size 1, resumed at tensor-parallel size 2, was refused
as "a tensor-parallel checkpoint resumes only at the same tensor-parallel and data-parallel sizes ... Resume with
train.tensor_parallel_size 1 on 2 rank(s)". It is no tensor-parallel checkpoint, and its data-parallel size is
free (a change converts once): the message now says what was saved and that any data-parallel size works.
A real tensor-parallel checkpoint keeps its words (tests/test_resume_world_size.py)."""

from __future__ import annotations

import pytest
import torch

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.reshape_plan import Layout, plan


def _checkpoint(folder, *, stage, tensor_parallel, data_parallel, pipeline_layers=False):
    """The files deepspeed_files.saved_layout reads: rank 0's model states with the sizes, and the names."""
    folder.mkdir(parents=True)
    states = {
        "ds_config": {"zero_optimization": {"stage": stage}},
        "mp_world_size": tensor_parallel,
        "dp_world_size": data_parallel,
    }
    torch.save(states, folder / "mp_rank_00_model_states.pt")
    (folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"")
    if pipeline_layers:
        (folder / "layer_00-model_00-model_states.pt").write_bytes(b"")
    return folder


def _refusal(source, current, out):
    with pytest.raises(NgptConfigError) as refused:
        plan(source, current, out)
    return str(refused.value)


def test_a_checkpoint_saved_at_tensor_parallel_size_1_is_not_called_a_tensor_parallel_checkpoint(tmp_path):
    source = _checkpoint(tmp_path / "checkpoints" / "step_00000003", stage=2, tensor_parallel=1, data_parallel=2)
    message = _refusal(source, Layout(zero_stage=2, data_parallel=1, tensor_parallel=2), tmp_path)
    assert message == (
        "cannot resume step_00000003 (saved at ZeRO stage 2, data-parallel size 2, tensor-parallel size 1) at ZeRO "
        "stage 2, data-parallel size 1, tensor-parallel size 2: a checkpoint saved without tensor parallelism "
        "(tensor-parallel size 1) resumes only at tensor-parallel size 1. DeepSpeed's universal checkpoints merge "
        "and split tensor-parallel slices by Megatron name patterns, and the ngpt_ds tensor-parallel layout "
        "(ngpt_ds/parallel) is not declared to them, so a converted checkpoint could be silently wrong. Resume with "
        "train.tensor_parallel_size 1 (at any data-parallel size)"
    )
    assert "a tensor-parallel checkpoint" not in message
    # Following the advice at another data-parallel size is a plain conversion, not another refusal.
    assert plan(source, Layout(zero_stage=2, data_parallel=1, tensor_parallel=1), tmp_path) is not None


def test_the_zero_stage_and_pipeline_stages_of_a_tensor_parallel_1_checkpoint_stay_in_the_advice(tmp_path):
    source = _checkpoint(tmp_path / "a" / "step_00000002", stage=1, tensor_parallel=1, data_parallel=1)
    message = _refusal(source, Layout(zero_stage=2, data_parallel=1, tensor_parallel=2), tmp_path)
    assert message.endswith("Resume with train.tensor_parallel_size 1 (at any data-parallel size), at ZeRO stage 1")
    # 2 pipeline stages x data-parallel 1: the ranks are fixed there.
    piped = _checkpoint(
        tmp_path / "b" / "step_00000002", stage=1, tensor_parallel=2, data_parallel=1, pipeline_layers=True
    )
    message = _refusal(piped, Layout(zero_stage=1, data_parallel=1, tensor_parallel=2), tmp_path)
    assert "a tensor-parallel checkpoint" not in message
    assert message.endswith(
        "Resume with train.tensor_parallel_size 1 and train.pipeline_parallel_size 2 on 2 rank(s)"
    ), message


def test_a_real_tensor_parallel_checkpoint_keeps_its_words(tmp_path):
    source = _checkpoint(tmp_path / "checkpoints" / "step_00000001", stage=2, tensor_parallel=2, data_parallel=1)
    message = _refusal(source, Layout(zero_stage=2, data_parallel=2, tensor_parallel=1), tmp_path)
    assert "a tensor-parallel checkpoint resumes only at the same tensor-parallel and data-parallel sizes" in message
    assert message.endswith("Resume with train.tensor_parallel_size 2 on 2 rank(s)")
