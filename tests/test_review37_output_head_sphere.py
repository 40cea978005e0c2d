"""set_output_embeddings of an nGPT checks that the new head's rows are unit norm (ngpt_ds/hf/output_head.py).

Fault (review of 80ff719): set_output_embeddings checked the head's `on_sphere` flag, not its rows. A fresh
`Projection(..., on_sphere=True)` (rows of norm about 0.1) went in without a word: the logits were no longer s_z
times cosines (paper eq. 24), and save_pretrained wrote a folder that from_pretrained then refused as corrupt ("an
nGPT weight matrix is not unit norm ... 0.924 > 0.0001"). Now the head is refused when it is set, naming the
deviation and the fix; a normalized head goes in and the saved folder loads with the same logits."""

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

IDS = torch.tensor([[5, 17, 99, 4, 300, 2]])


def _ngpt():
    from ngpt_ds.hf.configuration_ngpt import CONFIGS
    from ngpt_ds.hf.modeling_ngpt import MODELS
    from ngpt_ds.model import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    return MODELS["ngpt"](CONFIGS["ngpt"].from_model_config(config)).eval()


@torch.no_grad()
def test_an_ngpt_head_off_the_sphere_is_refused_when_set_and_a_normalized_one_loads_back(tmp_path):
    from ngpt_ds.model.layers import Projection

    model = _ngpt()
    head = model.get_output_embeddings()
    torch.manual_seed(1)
    off = Projection(32, 512, style="column", on_sphere=True, init_std=0.02)
    deviation = (off.weight.norm(dim=1) - 1).abs().max().item()
    assert deviation > 0.5  # rows of norm about 0.02 * sqrt(32)

    with pytest.raises(ValueError) as info:  # the old code: "DID NOT RAISE"
        model.set_output_embeddings(off)
    assert str(info.value).startswith(
        f"NGPTForCausalLM.set_output_embeddings: the new head has rows that are not unit norm (largest "
        f"| ||w|| - 1 | = {deviation:.3g} > 0.0001), and nGPT's head rows lie on the hypersphere: normalize them "
        "first, w / w.norm(dim=1, keepdim=True) (the head is [vocab_size, n_embd]"
    )
    assert model.get_output_embeddings() is head

    off.weight.div_(off.weight.norm(dim=1, keepdim=True))  # the fix the message names
    model.set_output_embeddings(off)
    assert model.get_output_embeddings() is off
    model.save_pretrained(tmp_path / "normalized")
    loaded = type(model).from_pretrained(tmp_path / "normalized").eval()
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)
    assert (loaded.get_output_embeddings().weight.norm(dim=1) - 1).abs().max().item() < 1e-6
