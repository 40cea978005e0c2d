"""output_hidden_states=True of ngpt_ds's transformers models (ngpt_ds.hf) under torch.compile, and the GPT base
model's final norm.

Fault 1 (session 35): the hidden states were recorded by forward hooks that forward registered on the blocks and
removed again (cache_and_states.StatesRecorder). torch.compile broke the graph there (a RemovableHandle, setattr on a
type: 5 breaks, 2 or 3 graphs for nGPT, 4 for the GPT baseline) and `torch.compile(model, fullgraph=True)` refused
the call ("torch._dynamo.exc.Unsupported: setattr() on unsupported type"). The hooks are now registered once, with
the model, and record only while a forward asked for the states: one graph, no break.

Fault 2: the GPT base model (AutoModel) with output_hidden_states=True ran its final RMSNorm twice on the same last
block output, once for hidden_states[-1] and once for last_hidden_state; now once, the two are one tensor (as
transformers' Llama returns them: the last entry of hidden_states is the normed output)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

IDS = torch.tensor([[5, 77, 300, 12, 9, 401], [3, 1, 4, 1, 5, 9]])
LEFT_PADDED = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


def _load(folder, base: bool):
    from transformers import AutoModel, AutoModelForCausalLM

    import ngpt_ds  # noqa: F401  registers the families with the Auto classes

    return (AutoModel if base else AutoModelForCausalLM).from_pretrained(folder).eval()


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
@pytest.mark.parametrize("base", [False, True], ids=["causal_lm", "base_model"])
@pytest.mark.parametrize("mask", [None, LEFT_PADDED], ids=["unpadded", "padded"])
def test_output_hidden_states_compiles_as_one_graph_with_the_eager_states(arch, base, mask, hf_saved):
    from torch._dynamo.utils import counters

    model = _load(hf_saved[arch], base)
    torch._dynamo.reset()
    counters.clear()
    whole = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        eager = model(IDS, attention_mask=mask, output_hidden_states=True)
        # The old code: torch._dynamo.exc.Unsupported: setattr() on unsupported type (the hooks registered here).
        compiled = whole(IDS, attention_mask=mask, output_hidden_states=True)
    assert counters["stats"]["unique_graphs"] == 1
    assert sum(counters["graph_break"].values()) == 0
    assert len(compiled.hidden_states) == len(eager.hidden_states) == 3  # the embedding's, then each block's
    assert eager.hidden_states[-1].abs().max().item() > 0.1  # not all zero: normed (GPT) or on the sphere (nGPT)
    for got, want in zip(compiled.hidden_states, eager.hidden_states, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(compiled[0], eager[0], rtol=0, atol=1e-5)  # logits, or last_hidden_state
    assert model._states_recorder.states is None  # nothing recorded, nor kept alive, after the forward
    with torch.no_grad():
        assert whole(IDS, attention_mask=mask).hidden_states is None


@torch.no_grad()
def test_the_gpt_base_model_runs_its_final_norm_once_for_the_last_hidden_state(hf_saved):
    """Old code: `assert calls == [1]` failed: [1, 1] (hidden_states[-1] and last_hidden_state normed apart)."""
    model = _load(hf_saved["gpt"], base=True)
    inner = model.model
    calls: list[int] = []
    handle = inner.final_norm.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = model(IDS, output_hidden_states=True)
    finally:
        handle.remove()
    assert calls == [1]
    assert out.hidden_states[-1] is out.last_hidden_state
    # transformers' convention (Llama): the embedding, each block's output, the last one after the final norm.
    cos, sin = inner.rotary.tables(IDS.shape[1], IDS.device, torch.float32, 0)
    h = inner.embed_tokens(IDS)
    assert torch.equal(out.hidden_states[0], h)
    for index, block in enumerate(inner.blocks):
        h = block(h, cos, sin)
        assert torch.equal(out.hidden_states[index + 1], inner.final_norm(h) if index == 1 else h), index


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_model_records_its_own_hidden_states(hf_saved, how):
    """A guard of the fix above, not a fault of the old code (whose hooks lived for one forward): the recording hooks
    live on the blocks now, so a copy (copy.deepcopy: a reference or EMA model; pickle) must carry hooks bound to its
    own recorder. Bound to the original's, the copy recorded nothing: 1 hidden state in place of 3."""
    model = _load(hf_saved["ngpt"], base=False)
    copied = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    with torch.no_grad():
        want = model(IDS, output_hidden_states=True).hidden_states
        got = copied(IDS, output_hidden_states=True).hidden_states
    assert copied._states_recorder is not model._states_recorder
    assert len(got) == 3
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def _block_by_block(inner, ids: torch.Tensor) -> list[torch.Tensor]:
    """The hidden states computed here, one block at a time: the embedding, then each block's output, the last one
    after the GPT baseline's final norm."""
    cos, sin = inner.rotary.tables(ids.shape[1], ids.device, torch.float32, 0)
    states = [inner.embed_tokens(ids)]
    for block in inner.blocks:
        states.append(block(states[-1], cos, sin))
    final_norm = getattr(inner, "final_norm", None)
    return states if final_norm is None else [*states[:-1], final_norm(states[-1])]


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
@torch.no_grad()
def test_blocks_put_into_the_model_after_it_was_built_record_their_states(hf_saved, arch):
    """A guard of the fix above: the old code registered its hooks on the blocks of each forward, so blocks pruned or
    replaced after the model was built recorded theirs; hooks registered once would miss a new block (2 states in
    place of 3) and, with block 0 pruned, the embedding. Eager, they still record; compiled (fullgraph), a block
    that never ran eagerly is refused with a message that says what to do, not 2 states for 2 blocks."""
    model = _load(hf_saved[arch], base=False)
    inner = model.model
    first, second = inner.blocks
    torch.manual_seed(1)
    inner.blocks = torch.nn.ModuleList([second])  # pruned: block 0 gone
    pruned = model(IDS, output_hidden_states=True, use_cache=False).hidden_states  # a cache is sized by n_layer
    assert len(pruned) == 2
    assert all(torch.equal(a, b) for a, b in zip(pruned, _block_by_block(inner, IDS), strict=True))

    inner.blocks = torch.nn.ModuleList([first, type(first)(inner.config)])  # a new block, never hooked
    torch._dynamo.reset()
    with pytest.raises(Exception) as refused:
        torch.compile(model, fullgraph=True)(IDS, output_hidden_states=True)
    assert "output_hidden_states recorded 2 states for 2 blocks: blocks put into the model after it was built" in str(
        refused.value
    )
    replaced = model(IDS, output_hidden_states=True).hidden_states  # eager: the new block gets its hooks
    assert len(replaced) == 3
    assert all(torch.equal(a, b) for a, b in zip(replaced, _block_by_block(inner, IDS), strict=True))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)(IDS, output_hidden_states=True).hidden_states  # hooked now
    for got, want in zip(compiled, replaced, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
