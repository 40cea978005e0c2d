"""Fault: forward ignored `shift_labels` (the targets already shifted, one per position, which transformers' causal
LM loss takes in place of labels and context-parallel training passes): `model(ids, shift_labels=t)` returned no
loss, and with labels too the loss came from labels alone. Now the loss is their mean cross-entropy over every
position, as transformers' ForCausalLMLoss computes it."""

import pytest
import torch
import torch.nn.functional as F


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_shift_labels_give_the_loss(hf_saved, arch):
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401  (registers the Auto classes)

    model = AutoModelForCausalLM.from_pretrained(str(hf_saved[arch]))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 512, (2, 12), generator=gen)
    following = torch.randint(0, 512, (2, 1), generator=gen)  # the next chunk's first tokens
    shifted = torch.cat([ids[:, 1:], following], 1)
    shifted[0, 3] = -100
    with torch.no_grad():
        out = model(ids, shift_labels=shifted)
        logits = model(ids).logits
        with_labels = model(ids, labels=ids, shift_labels=shifted).loss
    expected = F.cross_entropy(logits.flatten(0, 1), shifted.flatten(), ignore_index=-100)
    assert out.loss is not None
    assert abs(out.loss.item() - expected.item()) < 1e-6
    assert abs(with_labels.item() - expected.item()) < 1e-6  # shift_labels win, as in transformers' loss

    # The same targets as labels=ids (last position ignored): the same loss.
    as_labels = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], 1)
    with torch.no_grad():
        assert abs(model(ids, shift_labels=as_labels).loss.item() - model(ids, labels=ids).loss.item()) < 1e-6
    with pytest.raises(ValueError, match="labels has shape"):
        model(ids, shift_labels=shifted[:, :-1])
    with pytest.raises(ValueError, match="512"):
        model(ids, shift_labels=torch.full_like(ids, 512))
