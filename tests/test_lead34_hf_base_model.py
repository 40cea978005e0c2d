"""`AutoModel.from_pretrained(folder)`: the transformer without its output head, for embeddings and hidden states.

Fault: an hf folder of ngpt_ds (an `export.py --format hf` export, or save_pretrained's) loaded through
AutoModelForCausalLM only. AutoModel refused it, with ngpt_ds installed ("Unrecognized configuration class ... for
this kind of AutoModel") and through trust_remote_code (the folder's auto_map named no AutoModel), so the usual
feature-extraction code could not read an nGPT's hidden states."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from without_ngpt_ds import NOT_INSTALLED

from conftest import run

TOKENS = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(3))

REMOTE = (
    NOT_INSTALLED
    + """
import torch
from transformers import AutoModel
folder, tokens, out = sys.argv[1:4]
model = AutoModel.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    states = model(torch.load(tokens), output_hidden_states=True)
torch.save({"class": type(model).__name__, "module": type(model).__module__, "last": states.last_hidden_state,
            "states": states.hidden_states}, out)
"""
)


def _head(causal, last: torch.Tensor) -> torch.Tensor:
    """The causal LM's output head on a last hidden state: logits [B, T, V]."""
    model = causal.model
    return model.head(last, row_scale=model.s_z()) if hasattr(model, "s_z") else model.head(last)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_automodel_gives_the_hidden_states_that_the_causal_lm_puts_through_its_head(hf_saved, arch):
    """Old code: ValueError 'Unrecognized configuration class <class 'ngpt_ds.hf.configuration_ngpt.NGPTConfig'>
    for this kind of AutoModel: AutoModel'."""
    from transformers import AutoModel, AutoModelForCausalLM

    import ngpt_ds  # noqa: F401  (registers both families)

    base = AutoModel.from_pretrained(hf_saved[arch]).eval()
    causal = AutoModelForCausalLM.from_pretrained(hf_saved[arch]).eval()
    assert type(base).__name__ == {"ngpt": "NGPTModel", "gpt": "GPTBaselineModel"}[arch]
    with torch.no_grad():
        out = base(TOKENS, output_hidden_states=True)
        lm = causal(TOKENS, output_hidden_states=True)
        assert out.last_hidden_state.shape == (2, 16, 32)
        assert torch.equal(_head(causal, out.last_hidden_state), lm.logits)
        assert len(out.hidden_states) == 3  # the embedding's, then each of the 2 blocks'
        assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, lm.hidden_states, strict=True))
        assert torch.equal(out.hidden_states[-1], out.last_hidden_state)  # as transformers' Llama gives them
        as_tuple = base(TOKENS, return_dict=False, use_cache=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.last_hidden_state)
    if arch == "ngpt":  # nGPT's last hidden state is on the unit sphere (eq. 3 of the paper: no final norm)
        norms = out.last_hidden_state.norm(dim=-1)
        assert (norms - 1).abs().max().item() < 1e-5


def test_automodel_decodes_with_a_cache_as_it_reads_the_whole_sequence(hf_saved):
    from transformers import AutoModel

    import ngpt_ds  # noqa: F401

    base = AutoModel.from_pretrained(hf_saved["ngpt"]).eval()
    with torch.no_grad():
        whole = base(TOKENS).last_hidden_state
        first = base(TOKENS[:, :10], use_cache=True)
        rest = base(TOKENS[:, 10:], cache=first.cache, use_cache=True).last_hidden_state
    torch.testing.assert_close(torch.cat([first.last_hidden_state, rest], dim=1), whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_automodel_loads_through_the_folders_own_code_without_ngpt_ds(hf_saved, arch, tmp_path):
    """Old code: the folder's auto_map had no AutoModel: 'Unrecognized configuration class'."""
    from transformers import AutoModel

    import ngpt_ds  # noqa: F401

    with torch.no_grad():
        expected = AutoModel.from_pretrained(hf_saved[arch]).eval()(TOKENS, output_hidden_states=True)
    torch.save(TOKENS, tmp_path / "tokens.pt")
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    run(
        [sys.executable, "-c", REMOTE, hf_saved[arch], tmp_path / "tokens.pt", tmp_path / "out.pt"],
        cwd=tmp_path,
        env=env,
    )
    result = torch.load(tmp_path / "out.pt")
    assert result["module"].startswith("transformers_modules.")
    assert result["class"] == {"ngpt": "NGPTModel", "gpt": "GPTBaselineModel"}[arch]
    assert torch.equal(result["last"], expected.last_hidden_state)
    assert all(torch.equal(a, b) for a, b in zip(result["states"], expected.hidden_states, strict=True))


def test_a_saved_base_model_loads_as_the_causal_lm_with_the_same_logits(hf_saved, tmp_path):
    """The base model keeps the head's weights under the causal LM's names, so its own save_pretrained folder is a
    whole causal LM again."""
    from transformers import AutoModel, AutoModelForCausalLM

    import ngpt_ds  # noqa: F401

    AutoModel.from_pretrained(hf_saved["ngpt"]).save_pretrained(tmp_path / "base")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    original = AutoModelForCausalLM.from_pretrained(hf_saved["ngpt"]).eval()
    with torch.no_grad():
        assert torch.equal(again(TOKENS).logits, original(TOKENS).logits)
