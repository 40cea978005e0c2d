"""A batch with no target (every label -100, or only the first, which the shift drops) in the transformers causal
LMs' loss (ngpt_ds/hf/causal_loss.py), against transformers' own causal LM (a tiny Llama) on the same batch.

Fault: the loss values were transformers' (the mean NaN, 0/0; with num_items_in_batch the sum 0 over it), but
ngpt_ds's cross-entropy divides its gradient by the count of targets, so with none every gradient was NaN where
transformers' are exactly 0 (F.cross_entropy skips ignored targets in its backward). transformers' Trainer steps on
such a batch (a prompt-only example, a completion cut away by truncation): one step turned every weight NaN."""

import math

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

IDS = torch.randint(3, 512, (2, 8), generator=torch.Generator().manual_seed(0))
NONE = torch.full_like(IDS, -100)
FIRST_ONLY = torch.cat([IDS[:, :1], NONE[:, 1:]], dim=1)


def _model(arch: str):
    from ngpt_ds.hf.configuration_ngpt import CONFIGS
    from ngpt_ds.hf.modeling_ngpt import MODELS
    from ngpt_ds.model import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(arch=arch, vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    return MODELS[arch](CONFIGS[arch].from_model_config(config))


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    return LlamaForCausalLM(config)


def _loss_and_grads(model, **batch) -> tuple[float, list[torch.Tensor | None]]:
    model.zero_grad(set_to_none=True)
    loss = model(IDS, use_cache=False, **batch).loss
    loss.backward()
    return float(loss.detach()), [p.grad for p in model.parameters()]


CASES = {
    "all -100": {"labels": NONE},
    "only the first label": {"labels": FIRST_ONLY},
    "all -100, num_items_in_batch 0": {"labels": NONE, "num_items_in_batch": torch.tensor(0)},
    "all -100, num_items_in_batch int 0": {"labels": NONE, "num_items_in_batch": 0},
    "all -100, num_items_in_batch 5": {"labels": NONE, "num_items_in_batch": torch.tensor(5)},
    "shift_labels all -100": {"labels": NONE, "shift_labels": NONE},
}


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_batch_with_no_target_gives_transformers_loss_and_zero_gradients(arch, case):
    """The old code's failing line: `assert not grad.isnan().any()` (every gradient NaN, in every case but the
    sum over a positive num_items_in_batch)."""
    want, want_grads = _loss_and_grads(_llama(), **CASES[case])
    got, grads = _loss_and_grads(_model(arch), **CASES[case])
    if math.isnan(want):
        assert math.isnan(got)
    else:
        assert got == want == 0.0 and math.copysign(1.0, got) == 1.0  # 0.0, as transformers' sum of nothing
    assert all(g is not None and not bool(g.any()) for g in want_grads)  # transformers: every gradient exactly 0
    for grad in grads:
        assert grad is not None
        assert not grad.isnan().any()
        assert not grad.any()


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_a_batch_with_targets_keeps_its_loss_bit_for_bit(arch):
    """Not a fault: where there are targets, the loss is ngpt_ds's mean cross-entropy as before, bit for bit, and
    with num_items_in_batch that mean times the count, over it."""
    model = _model(arch)
    labels = IDS.clone()
    labels[0, 3:] = -100
    with torch.no_grad():
        logits = model(IDS).logits[:, :-1]
        targets = labels[:, 1:].masked_fill(labels[:, 1:] == -100, -1)
        mean = model.model.cross_entropy(logits, targets)
        assert torch.equal(model(IDS, labels=labels).loss, mean)
        assert torch.equal(model(IDS, labels=labels, num_items_in_batch=torch.tensor(40)).loss, mean * 9 / 40)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_the_trainer_steps_over_a_batch_with_no_target_and_the_weights_stay_finite(arch, tmp_path):
    """The user's case: transformers' Trainer, whose first optimizer step gets a batch with no target. On the old
    code every weight was NaN after it (`assert torch.isfinite(param).all()`); now that step has zero gradients,
    as a Llama's has, and the second step trains."""
    from transformers import Trainer, TrainingArguments

    from ngpt_ds.model.sphere import max_norm_deviation

    model = _model(arch)
    rows = [{"input_ids": IDS[i % 2], "labels": NONE[i % 2] if i < 2 else IDS[i % 2]} for i in range(4)]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        train_sampling_strategy="sequential",  # the batch with no target first
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    trainer.train()
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name
    assert any(not torch.equal(before[name], p) for name, p in model.named_parameters())
    if arch == "ngpt":
        assert max_norm_deviation(model.model) <= 1e-6
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and math.isfinite(losses[1]) and losses[1] > 1.0


def test_num_items_in_batch_compiles_in_one_graph():
    """Fault found with the above: the loss over num_items_in_batch read the count of targets on the host
    (`int((targets != -1).sum())`), so `torch.compile(model, fullgraph=True)` refused a forward with it, as the
    Trainer calls it under gradient accumulation ("Could not guard on data-dependent expression Ne(u0, 0)"). Now one graph, with the
    eager values, a batch with no target included."""
    model = _model("ngpt").eval()
    whole = torch.compile(model, fullgraph=True)
    labels = IDS.clone()
    labels[0, 2:] = -100
    with torch.no_grad():
        for batch in ({"labels": labels}, {"labels": labels, "num_items_in_batch": torch.tensor(9)}):
            torch.testing.assert_close(whole(IDS, **batch).loss, model(IDS, **batch).loss, atol=1e-6, rtol=0)
        assert whole(IDS, labels=NONE).loss.isnan()
        assert float(whole(IDS, labels=NONE, num_items_in_batch=torch.tensor(3)).loss) == 0.0
