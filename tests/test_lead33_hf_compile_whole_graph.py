"""Fault (session 33): a transformers model of ngpt_ds (ngpt_ds.hf) compiled with torch.compile broke its graph in
two at the token id check (forward_inputs.check_token_ids: `bool(outside.any())` reads a tensor on the host), and
again at each check of labels: every compiled forward ran as several graphs with Python between them, and
`torch.compile(model, fullgraph=True)` refused the model ("Unsupported Tensor.item() call"). Under compile the
checks are now made inside the graph (torch._assert_async): the same refusal of an id outside the vocabulary,
naming the argument (a RuntimeError on a CPU), with no break. An attention_mask still breaks it: which path
runs depends on its values (forward_inputs.padding says so)."""

from __future__ import annotations

import pytest
import torch

IDS = torch.tensor([[5, 77, 300, 12, 9, 401], [3, 1, 4, 1, 5, 9]])


def _load(folder):
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401  registers the families with the Auto classes

    return AutoModelForCausalLM.from_pretrained(folder).eval()


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_the_model_compiles_as_one_graph_with_the_eager_logits_and_loss(arch, hf_saved):
    model = _load(hf_saved[arch])
    torch._dynamo.reset()
    whole = torch.compile(model, fullgraph=True)  # the old code: torch._dynamo.exc.Unsupported (a graph break)
    with torch.no_grad():
        eager, compiled = model(IDS, labels=IDS), whole(IDS, labels=IDS)
        plain = whole(IDS).logits
    assert eager.logits.abs().max().item() > 0.1
    torch.testing.assert_close(compiled.logits, eager.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(plain, eager.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(compiled.loss, eager.loss, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
@pytest.mark.parametrize("where", ["input_ids", "labels"])
def test_a_compiled_model_refuses_an_id_outside_the_vocabulary_naming_it(arch, where, hf_saved):
    model = _load(hf_saved[arch])
    vocab = model.config.vocab_size
    bad = IDS.clone()
    bad[1, 2] = vocab  # a token added to the tokenizer, the model not resized
    torch._dynamo.reset()
    whole = torch.compile(model, fullgraph=True)
    with torch.no_grad(), pytest.raises(RuntimeError) as refused:
        whole(bad, labels=IDS) if where == "input_ids" else whole(IDS, labels=bad)
    assert f"{where} hold a value that is no token id of this model (0 to {vocab - 1})" in str(refused.value)
    with pytest.raises(ValueError, match=f"^{where} hold {vocab}, which is no token id of this model"):  # eager
        model(bad, labels=IDS) if where == "input_ids" else model(IDS, labels=bad)
