"""`num_parameters(exclude_embeddings=True)` of ngpt_ds's transformers models, and the Trainer's floating point count.

Fault: transformers' num_parameters leaves out only the weights of nn.Embedding modules, and ngpt_ds's input
embedding is its own TokenEmbedding (ngpt_ds.model.layers), so exclude_embeddings=True counted it: every parameter.
transformers' Trainer computes its `total_flos` (trainer_state.json, the train metrics) as 6 x tokens x that count,
too large by 6 x tokens x vocab x d (for the tiny models here 66752 parameters counted in place of 50368). As in
transformers' Llama, the input embedding (get_input_embeddings) is left out, the output head is not."""

from __future__ import annotations

import pytest
import torch

IDS = torch.tensor([[5, 77, 300, 12, 9, 401], [3, 1, 4, 1, 5, 9]])


def _load(folder):
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401  registers the families with the Auto classes

    return AutoModelForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_exclude_embeddings_leaves_out_the_input_embedding(hf_saved, arch, tmp_path):
    """Old code: `assert without == every - 512 * 32` failed (66752 == 50368 for nGPT, 65696 == 49312 for the GPT)."""
    from transformers import Trainer, TrainingArguments

    model = _load(hf_saved[arch])
    every = sum(p.numel() for p in model.parameters())
    without = model.num_parameters(exclude_embeddings=True)
    assert model.num_parameters() == every
    assert without == every - 512 * 32  # the input embedding [vocab 512, d 32]; the head [512, 32] stays counted
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    assert Trainer(model=model, args=args).floating_point_ops({"input_ids": IDS}) == 6 * IDS.numel() * without

    model.get_input_embeddings().weight.requires_grad_(False)  # frozen: not trainable, and no embedding to leave out
    trainable = every - 512 * 32
    assert model.num_parameters(only_trainable=True) == trainable
    assert model.num_parameters(only_trainable=True, exclude_embeddings=True) == trainable
    model.model.head.weight.requires_grad_(False)
    assert model.num_parameters(only_trainable=True, exclude_embeddings=True) == trainable - 512 * 32
