"""Fault: a transformers model of ngpt_ds compiled with torch.compile broke its graph at every forward given an
attention_mask: forward_inputs.padding read the mask (`bool(key_mask.all())`) and the positions
(`bool((positions == default).all())`) on the host to pick the training path, and the padded path read its positions
twice more (ngpt_ds.model.lm's `bool((positions < 0).any())`, RoPE's tables_at `int(positions.max())`): a left-padded
batch ran as 9 graphs (torch._dynamo counters, 2 layers), torch.compile(model, fullgraph=True) refused it. Under
compile the padded path now runs whatever the mask holds (the same outputs for a mask of ones), its check is made in
the graph (torch._assert_async) and RoPE's rows are one opaque operator: one graph."""

from __future__ import annotations

import pytest
import torch

IDS = torch.tensor([[5, 77, 300, 12, 9, 401], [3, 1, 4, 1, 5, 9]])
MASKS = {"left_padded": torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6]), "ones": torch.ones(2, 6, dtype=torch.long)}


@pytest.mark.parametrize("mask", sorted(MASKS))
@pytest.mark.parametrize("kind", ["causal", "base"])
@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_a_model_given_an_attention_mask_compiles_as_one_graph_with_the_eager_outputs(hf_saved, arch, kind, mask):
    from transformers import AutoModel, AutoModelForCausalLM

    import ngpt_ds  # noqa: F401  (registers both families)

    model = {"causal": AutoModelForCausalLM, "base": AutoModel}[kind].from_pretrained(hf_saved[arch]).eval()
    torch._dynamo.reset()
    whole = torch.compile(model, fullgraph=True)  # old code: torch._dynamo.exc.Unsupported (Tensor.item())
    with torch.no_grad():
        eager, compiled = model(IDS, attention_mask=MASKS[mask])[0], whole(IDS, attention_mask=MASKS[mask])[0]
    assert eager.abs().max().item() > 0.1
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)


def test_a_compiled_model_refuses_negative_position_ids(hf_saved):
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401

    model = AutoModelForCausalLM.from_pretrained(hf_saved["ngpt"]).eval()
    torch._dynamo.reset()
    whole = torch.compile(model, fullgraph=True)
    with torch.no_grad(), pytest.raises(RuntimeError, match="position_ids must be integers >= 0"):
        whole(IDS, attention_mask=MASKS["left_padded"], position_ids=torch.tensor([[-1, 0, 1, 2, 3, 4]] * 2))
