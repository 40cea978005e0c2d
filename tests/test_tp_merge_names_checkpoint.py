"""Fault: a tensor-parallel checkpoint whose per-rank weights do not fit its config.yaml was refused by
`merge_tensor_parallel` with a message naming the rank and the parameter but not the checkpoint. generate,
evaluate and export take a run folder and pick its newest intact checkpoint themselves, so the user was not
told which step_N folder held the bad files. Before: "the tensor-parallel checkpoint's weights do not fit its
model config: tensor-parallel rank 0 of 2 holds embed.weight of shape ...". Now the same message, led by the
checkpoint's path.
"""

from pathlib import Path

import pytest
import torch

from ngpt_ds import deepspeed_files
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.infer.run_checkpoint import read_checkpoint_weights
from ngpt_ds.model import ModelConfig, build_model


def test_the_merge_error_names_the_checkpoint(monkeypatch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="ngpt", vocab_size=64, n_layer=1, n_embd=24, n_head=4, seq_len=8))
    checkpoint = Path("run/checkpoints/step_00000003")
    rank_weights = {n: p.detach() for n, p in model.named_parameters()}  # unsplit: no rank of 2 holds these

    def read_weights(path, stage, group_names, merge):  # what deepspeed_files hands the merge: one dict per rank
        assert path == checkpoint
        return merge([rank_weights, rank_weights])

    monkeypatch.setattr(deepspeed_files, "read_weights", read_weights)
    with pytest.raises(NgptConfigError) as err:
        read_checkpoint_weights(checkpoint, {"deepspeed": {"zero_optimization": {"stage": 1}}}, model)
    assert str(err.value) == (
        f"{checkpoint}: the tensor-parallel checkpoint's weights do not fit its model config: tensor-parallel "
        "rank 0 of 2 holds embed.weight of shape [64, 24], where the model's split over 2 rank(s) needs [32, 24]. "
        "The files (mp_rank_XX, one per tensor-parallel rank) are damaged, altered or from another model, or its "
        "config.yaml is not the one it was trained with; use another checkpoint"
    )
