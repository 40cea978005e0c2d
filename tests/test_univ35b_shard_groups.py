"""Fault: a resume at the world size a checkpoint was saved with did not check the optimizer state DeepSpeed's load
copies from each rank's ZeRO shard ([bf16_]zero_pp_rank_R_mp_rank_00_optim_states.pt: base_optimizer_state's
param_groups, their lr, betas, eps, weight_decay). A shard altered with its manifest rebuilt (the vectors' group's
lr NaN, 1 rank at ZeRO 2) was loaded as it was, and the run stopped at step 5 on "the training loss became nan ...
lower train.lr": the config was blamed for a damaged checkpoint. Now each rank reads the shard it loads
(ngpt_ds.train.shard_groups_check) and every rank stops with exit 2 on one line naming the file and the field,
before DeepSpeed reads it; an untouched checkpoint resumes as before. Real 2-rank gloo jobs at ZeRO 2; ZeRO 3's
inner param_groups on the check alone."""

from __future__ import annotations

import shutil

import pytest
import torch
from crafted_checkpoints import alter, assert_resumed_as, rewound

from ngpt_ds.train import shard_groups_check

from conftest import run_ranks, tiny_ngpt, tiny_train, train_cmd, train_run, write_ds_config, write_yaml

HANG_GUARD_S = 240  # a hang guard only
SOURCE = "step_00000003"
GROUPS = "optimizer_state_dict['base_optimizer_state']['param_groups']"


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_dataset):
    """A 2-rank ZeRO 2 run of 6 steps (checkpoints at 3 and 6), and a 1-rank ZeRO 3 run of 3 steps."""
    root = tmp_path_factory.mktemp("univ35b_shard_groups")
    write_yaml(root / "run.yaml", tiny_ngpt(), tiny_train(6, checkpoint_interval=3))
    write_ds_config(root / "z2.json", stage=2, bf16=False, micro=2, accum=1)
    train_run(root / "run.yaml", root / "z2.json", tiny_dataset, root / "run2", nproc=2)
    write_yaml(root / "short.yaml", tiny_ngpt(), tiny_train(3, checkpoint_interval=3))
    write_ds_config(root / "z3.json", stage=3, bf16=False, micro=2, accum=1)
    train_run(root / "short.yaml", root / "z3.json", tiny_dataset, root / "run3", forked=True)
    return root


def _at_step_3(made, into):
    """The 2-rank run as it was at step 3 (its step 6 removed)."""
    return rewound(made / "run2", into, SOURCE, "step_00000006") / SOURCE


def _craft(folder, shard: str, change) -> None:
    """Alter one optimizer shard, then rebuild the manifest as whoever altered it would."""
    alter(folder / shard, change, folder)


def _resume(made, data, out):
    return run_ranks(train_cmd(made / "run.yaml", made / "z2.json", data, out), nproc=2, timeout=HANG_GUARD_S)


def _base_groups(saved) -> list:
    return saved["optimizer_state_dict"]["base_optimizer_state"]["param_groups"]


CRAFTS = {
    "nan_lr": (
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
        lambda saved: _base_groups(saved)[1].update(lr=float("nan")),
        f"{GROUPS}[1]['lr'] is nan, not a finite number",
    ),
    "one_group": (
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        lambda saved: _base_groups(saved).pop(),
        f"{GROUPS} holds 1 group(s), where the model's optimizer has 2",
    ),
}


@pytest.mark.parametrize("kind", sorted(CRAFTS))
def test_an_altered_shard_is_refused_on_every_rank_naming_the_file_and_the_field(made, tmp_path, tiny_dataset, kind):
    source = _at_step_3(made, tmp_path / "out")
    shard, alter, field = CRAFTS[kind]
    _craft(source, shard, alter)
    codes, logs = _resume(made, tiny_dataset, tmp_path / "out")
    assert codes == [2, 2], logs[0][-3000:]  # old code, nan_lr: 2 on "the training loss became nan at step 5"
    want = (
        f"error: {source / shard}: {field}: the checkpoint {source} was altered or damaged after it was saved. "
        "Resume from another checkpoint (--resume PATH), or start a new run with --resume none and another --out"
    )
    for log in logs:
        assert [line for line in log.splitlines() if line.startswith("error:")] == [want], log[-3000:]
        assert "Traceback" not in log and "step      4/6" not in log
    assert sorted(p.name for p in source.parent.iterdir() if p.name.startswith("step_")) == [SOURCE]


def test_an_untouched_checkpoint_resumes_on_two_ranks_as_the_uninterrupted_run(made, tmp_path, tiny_dataset):
    _at_step_3(made, tmp_path / "out")
    codes, logs = _resume(made, tiny_dataset, tmp_path / "out")
    assert codes == [0, 0], logs[0][-3000:]
    assert_resumed_as(made / "run2", tmp_path / "out", [4, 5, 6])


def _inner_groups(saved) -> list:
    return saved["optimizer_state_dict"]["optimizer_state_dict"]["param_groups"]


ZERO3 = {
    "eps": (lambda saved: _inner_groups(saved)[0].update(eps=float("inf")), "[0]['eps'] is inf, not a finite number"),
    "betas": (
        lambda saved: _inner_groups(saved)[1].update(betas=(0.9,)),
        "[1]['betas'] is (0.9,), not a pair of numbers",
    ),
    "weight_decay": (
        lambda saved: _inner_groups(saved)[0].update(weight_decay="0.1"),
        "[0]['weight_decay'] is '0.1', not a number",
    ),
    "tensor_lr": (
        lambda saved: _inner_groups(saved)[1].update(lr=torch.tensor(float("nan"))),
        "[1]['lr'] is nan, not a finite number",
    ),
}


@pytest.mark.parametrize("kind", sorted(ZERO3))
def test_zero3s_inner_param_groups_are_checked(made, tmp_path, kind):
    folder = tmp_path / SOURCE
    shutil.copytree(made / "run3" / "checkpoints" / SOURCE, folder)
    shard = folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    assert shard_groups_check.shard_problem(shard, zero3=True, groups=2) is None
    assert shard_groups_check.shard_problem(shard, zero3=True, groups=3).startswith(
        f"{shard}: optimizer_state_dict['optimizer_state_dict']['param_groups'] holds 2 group(s), where the model's "
        "optimizer has 3: "
    )
    alter, field = ZERO3[kind]
    _craft(folder, shard.name, alter)
    found = shard_groups_check.shard_problem(shard, zero3=True, groups=2)
    assert found is not None
    assert found.startswith(f"{shard}: optimizer_state_dict['optimizer_state_dict']['param_groups']{field}"), found
