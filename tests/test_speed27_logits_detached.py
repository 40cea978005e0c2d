"""`CausalLM.forward(tokens, targets)` returns the logits detached beside the loss (ngpt_ds/model/lm.py).

Under torch.compile, logits returned with grad were a second differentiable output of the graph: every
backward filled a zero [B, T, V] gradient for them and the loss kernel added it in (docs/benchmarks.md,
"What was changed, and what it gave"; bench/logits_tangent.py). Detached, the backward has no such fill and
the loss and every gradient stay bit-identical to the form with the logits' graph kept.
"""

from __future__ import annotations

import pytest
import torch
from grad_steps import assert_same_step, loss_and_grads
from torch.profiler import ProfilerActivity, profile

from ngpt_ds.model import ModelConfig, build_model

VOCAB, B, T = 96, 2, 16


def _model(arch: str) -> torch.nn.Module:
    # n_embd 64: at 32 (bf16, vocabulary 512) the two compiled forms' head.weight gradients came 6.1e-5 apart,
    # one bf16 step, as any change of Inductor's fusions can move them; at 64, at ngpt_tiny's shapes and in
    # fp32 at 32 they were bit-identical (docs/benchmarks.md).
    config = ModelConfig(arch=arch, vocab_size=VOCAB, n_layer=1, n_embd=64, n_head=2, seq_len=T).validate()
    torch.manual_seed(7)
    return build_model(config).to(torch.bfloat16)


def _logits_then_loss(model, inputs, targets):
    """The form before the change: the logits' graph kept beside the loss."""
    logits = model(inputs)[0]
    return logits, model.cross_entropy(logits, targets)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_logits_beside_the_loss_are_detached_and_equal(arch: str) -> None:
    model = _model(arch)
    tokens = torch.randint(0, VOCAB, (B, T + 1))
    logits, loss = model(tokens[:, :-1], tokens[:, 1:])
    assert not logits.requires_grad and loss is not None and loss.requires_grad
    plain, none = model(tokens[:, :-1])
    assert none is None and plain.requires_grad  # without targets the logits keep their graph
    assert torch.equal(logits, plain.detach())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def _compiled_step(model, form, inputs, targets):
    return loss_and_grads(model, lambda: form(inputs, targets)[1])


@pytest.mark.parametrize("arch", ["ngpt"])  # GPT shares CausalLM.forward; one compile pair keeps the test short
def test_compiled_backward_has_no_zero_logits_gradient_and_same_gradients(arch: str) -> None:
    model = _model(arch)
    tokens = torch.randint(0, VOCAB, (B, T + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    forms = {
        "with_grad": torch.compile(lambda i, t: _logits_then_loss(model, i, t)),
        "detached": torch.compile(lambda i, t: model(i, t)),
    }
    results, fills = {}, {}
    for name, form in forms.items():
        _compiled_step(model, form, inputs, targets)  # compiles forward and backward
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            results[name] = _compiled_step(model, form, inputs, targets)
        fills[name] = sum(
            1
            for e in prof.events()
            if e.name in ("aten::fill_", "aten::zero_") and e.input_shapes and e.input_shapes[0] == [B, T, VOCAB]
        )
    assert fills["with_grad"] >= 1  # the cost this change removes is there in the old form
    assert fills["detached"] == 0
    assert_same_step(results["detached"], results["with_grad"])
    assert max(g.abs().max().item() for g in results["detached"][1].values()) > 0
