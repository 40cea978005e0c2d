"""Activation checkpointing (train.activation_checkpointing): the same gradients, bit for bit.

torch.utils.checkpoint(use_reentrant=False) stores a block's input only and runs the block again
in backward, replaying the RNG state, so every gradient must equal the stored-activation one
exactly, for nGPT and the GPT baseline, and a 2-rank ZeRO-2 run must give the same losses.
"""

import pytest
import torch

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model import ModelConfig, build_model
from ngpt_ds.train.config import TrainConfig

from conftest import read_metrics, tiny_ngpt, tiny_train, torchrun, train_cmd, write_ds_config, write_yaml


def gradients(arch: str, every: int) -> tuple[dict[str, torch.Tensor], list[int]]:
    """One fp32 forward/backward of a 3-block model; the gradients and each block's forward count."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, vocab_size=61, n_layer=3, n_embd=32, n_head=4, seq_len=16).validate())
    model.checkpoint_every = every
    calls = [0] * len(model.blocks)
    for i, block in enumerate(model.blocks):  # a pre-hook: recomputation stops early, before a forward hook
        block.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    tokens = torch.randint(0, 61, (2, 17), generator=torch.Generator().manual_seed(1))
    _, loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}, calls


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
@pytest.mark.parametrize("every, recomputed", [(1, [2, 2, 2]), (2, [2, 1, 2])])
def test_checkpointed_gradients_equal_stored_activation_gradients_bit_for_bit(arch, every, recomputed):
    reference, plain_calls = gradients(arch, 0)
    checkpointed, calls = gradients(arch, every)
    assert plain_calls == [1, 1, 1]
    assert calls == recomputed  # the checkpointed blocks really ran again in backward
    assert reference.keys() == checkpointed.keys()
    for name, grad in reference.items():
        assert grad is not None and checkpointed[name] is not None, name
        assert torch.equal(grad, checkpointed[name]), name


def test_no_recomputation_without_grad():
    model = build_model(ModelConfig(arch="ngpt", vocab_size=61, n_layer=2, n_embd=32, n_head=4, seq_len=16).validate())
    model.checkpoint_every = 1
    calls = []
    model.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(torch.zeros(1, 8, dtype=torch.long))
    assert calls == [1]


@pytest.mark.parametrize("value, every", [("none", 0), ("blocks", 1), ({"every_k": 3}, 3)])
def test_config_values(value, every):
    assert TrainConfig.from_dict({"activation_checkpointing": value}).validate().checkpoint_every == every


@pytest.mark.parametrize("value", ["all", {"every_k": 0}, {"every_k": "2"}, {"every": 2}, {"every_k": True}, 2, None])
def test_bad_config_values_are_named(value):
    with pytest.raises(NgptConfigError, match=r"train\.activation_checkpointing"):
        TrainConfig.from_dict({"activation_checkpointing": value}, source="x.yaml").validate()


def test_two_rank_zero2_run_with_block_checkpointing_gives_the_same_losses(tmp_path, tiny_dataset):
    model, train = tiny_ngpt(), tiny_train(4, eval_batches=1)
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    losses, deviations = {}, {}
    for mode in ("none", "blocks"):
        config = write_yaml(tmp_path / f"{mode}.yaml", model, {**train, "activation_checkpointing": mode})
        out = tmp_path / mode
        torchrun(*train_cmd(config, ds, tiny_dataset, out), nproc=2)
        losses[mode] = [r["train/loss"] for r in read_metrics(out)]
        deviations[mode] = [r["ngpt/max_norm_deviation"] for r in read_metrics(out)]
    assert len(losses["none"]) == 4
    assert losses["blocks"] == losses["none"]  # exact: same gradients, same hook, same updates
    assert deviations["blocks"] == deviations["none"] and max(deviations["blocks"]) < 1e-5  # masters on the sphere
