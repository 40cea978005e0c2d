"""The GPT baseline's causal LM (ngpt_ds.hf.modeling_ngpt.GPTBaselineForCausalLM) with output_hidden_states=True.

Fault: it ran its final RMSNorm twice on the last block's output, once for hidden_states[-1] (transformers' last
hidden state, after the final norm as Llama gives it) and once more inside ngpt_ds.model.gpt's `logits`. The head now
takes hidden_states[-1] as it is (GPT.normed_logits): one norm, and the same numbers, bit for bit, as before (the
logits, the loss and every hidden state, padded or not, all positions or the last only)."""

from __future__ import annotations

import pytest
import torch

IDS = torch.tensor([[5, 77, 300, 12, 9, 401], [3, 1, 4, 1, 5, 9]])
LEFT_PADDED = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


def _load(folder):
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401  registers the families with the Auto classes

    return AutoModelForCausalLM.from_pretrained(folder).eval()


@torch.no_grad()
def test_the_gpt_causal_lm_runs_its_final_norm_once_with_output_hidden_states(hf_saved):
    """Old code: `assert calls == [1]` failed: [1, 1] (hidden_states[-1] normed, then h normed again for the head)."""
    model = _load(hf_saved["gpt"])
    calls: list[int] = []
    handle = model.model.final_norm.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = model(IDS, labels=IDS, output_hidden_states=True, use_cache=False)
    finally:
        handle.remove()
    assert calls == [1]
    assert len(out.hidden_states) == 3
    calls.clear()
    handle = model.model.final_norm.register_forward_hook(lambda *_: calls.append(1))
    try:
        model(IDS, labels=IDS, use_cache=False)  # without the states: logits' own norm, once, as always
    finally:
        handle.remove()
    assert calls == [1]


@pytest.mark.parametrize("arch", ["gpt", "ngpt"])
@pytest.mark.parametrize("mask", [None, LEFT_PADDED], ids=["unpadded", "padded"])
@pytest.mark.parametrize("keep", [0, 1, 4])
@torch.no_grad()
def test_output_hidden_states_leaves_the_logits_loss_and_states_bit_for_bit(hf_saved, arch, mask, keep):
    """The numbers the old code gave: the logits of the model's own `logits` on the last block's output (what a
    forward without output_hidden_states computes, unchanged), its loss, and the states recorded block by block."""
    model = _load(hf_saved[arch])
    labels = IDS if keep == 0 else None  # labels need every position's logits
    plain = model(IDS, attention_mask=mask, labels=labels, use_cache=False, logits_to_keep=keep)
    out = model(
        IDS, attention_mask=mask, labels=labels, use_cache=False, logits_to_keep=keep, output_hidden_states=True
    )
    assert out.logits.shape == (2, keep or 6, 512)
    assert torch.equal(out.logits, plain.logits)
    if labels is not None:
        assert out.loss is not None and torch.equal(out.loss, plain.loss)
    inner = model.model
    positions = None if mask is None else (mask.cumsum(-1) - 1).clamp(min=0)
    key_mask = None if mask is None else mask.bool()
    h = inner.hidden_states(IDS, None, positions=positions, key_mask=key_mask)
    assert torch.equal(out.logits, inner.logits(h[:, -keep:] if keep else h))  # the old code's logits, exactly
    final_norm = getattr(inner, "final_norm", None)
    assert torch.equal(out.hidden_states[-1], h if final_norm is None else final_norm(h))
    states = model(IDS, attention_mask=mask, use_cache=False, output_hidden_states=True).hidden_states
    assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, states, strict=True))
