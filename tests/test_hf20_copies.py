"""A copy of an HF nGPT made by copy.deepcopy or pickle (a reference or EMA model, a kept best model,
torch.save(model)) is renormalized after its optimizer's steps as the original is: it stays an nGPT."""

import copy
import io

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

IDS = torch.randint(3, 512, (4, 16), generator=torch.Generator().manual_seed(0))


def _model(arch: str):
    from ngpt_ds.hf.configuration_ngpt import CONFIGS
    from ngpt_ds.hf.modeling_ngpt import MODELS
    from ngpt_ds.model import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(arch=arch, vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    return MODELS[arch](CONFIGS[arch].from_model_config(config)).train()


def _steps(module, n: int = 3) -> None:
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    for _ in range(n):
        module(IDS, labels=IDS, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def _pickled(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("make_copy", [copy.deepcopy, _pickled], ids=["deepcopy", "pickle"])
def test_a_copied_ngpt_is_renormalized_after_its_optimizer_steps(make_copy):
    """Fault: copy.deepcopy of an HF nGPT (a reference or EMA model, a kept best model) and a model pickled with
    torch.save(model) were built without __init__, so never registered with the renormalization after each
    optimizer step. Before: the copy fine-tuned with AdamW (3 steps, lr 1e-3) ended 0.00923 off unit norm, no
    nGPT, and from_pretrained refused what it saved. Now: the copy's weights equal the original's after the same
    steps, bit for bit, on the sphere."""
    from ngpt_ds.model.sphere import max_norm_deviation

    original = _model("ngpt")
    copied = make_copy(original)
    assert copied is not original and copied.model.embed.weight is not original.model.embed.weight
    _steps(copied)
    _steps(original)
    assert max_norm_deviation(copied.model) <= 2e-7
    for (name, p), q in zip(copied.named_parameters(), original.parameters()):
        assert torch.equal(p, q), name


def test_a_shallow_copy_shares_the_matrices_and_they_are_renormalized_once():
    """copy.copy shares the parameters, and both models are registered: each matrix is still renormalized once per
    step (twice changed 17 of its tensors' last bits)."""
    shallow = copy.copy(_model("ngpt"))
    _steps(shallow)
    alone = _model("ngpt")
    _steps(alone)
    for (name, p), q in zip(shallow.named_parameters(), alone.parameters()):
        assert torch.equal(p, q), name


def test_a_copied_gpt_is_left_alone():
    """The GPT baseline has no sphere: its copy is not registered, and trains as a plain torch model."""
    from ngpt_ds.hf.modeling_ngpt import _SPHERE_MODELS

    gpt = copy.deepcopy(_model("gpt"))
    assert gpt not in _SPHERE_MODELS
    assert copy.deepcopy(_model("ngpt")) in _SPHERE_MODELS
