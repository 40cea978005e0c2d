"""Fault: a resume at ZeRO 0 did not check the optimizer state DeepSpeed's load copies from the model states file
(mp_rank_00_model_states.pt under 'optimizer': torch's optimizer state_dict, its param_groups' lr, betas, eps and
weight_decay). 8574dac checked the ZeRO 1-3 shards only. A file altered with its manifest rebuilt (the vectors'
group's lr NaN, 1 rank, fp32) was loaded as it was, and the run stopped two steps later on "the training loss became
nan ... lower train.lr": the config was blamed for a damaged checkpoint. Now every rank reads the param_groups first
(ngpt_ds.train.shard_groups_check) and stops with exit 2 on one line naming the file and the field; an untouched
checkpoint resumes as before. Real 1-rank ZeRO 0 runs; the FP16_Optimizer's layout (fp16/bf16 at ZeRO 0: the inner
optimizer_state_dict) on the check alone."""

from __future__ import annotations

import shutil

import pytest
from crafted_checkpoints import alter, assert_resumed_as, rewound

from ngpt_ds.train import shard_groups_check

from conftest import run_ranks, tiny_ngpt, tiny_train, train_cmd, train_run, write_ds_config, write_yaml

HANG_GUARD_S = 240  # a hang guard only
SOURCE = "step_00000003"
STATES = "mp_rank_00_model_states.pt"


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_dataset):
    """A 1-rank ZeRO 0 fp32 run of 6 steps (checkpoints at 3 and 6), and a 1-rank ZeRO 0 bf16 run of 3 steps."""
    root = tmp_path_factory.mktemp("zero35_zero0_groups")
    write_yaml(root / "run.yaml", tiny_ngpt(), tiny_train(6, checkpoint_interval=3))
    write_ds_config(root / "z0.json", stage=0, bf16=False, micro=2, accum=1)
    done = train_run(root / "run.yaml", root / "z0.json", tiny_dataset, root / "run", forked=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    write_yaml(root / "short.yaml", tiny_ngpt(), tiny_train(3, checkpoint_interval=3))
    write_ds_config(root / "b0.json", stage=0, bf16=True, micro=2, accum=1)
    done = train_run(root / "short.yaml", root / "b0.json", tiny_dataset, root / "bf16", forked=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root


def _at_step_3(made, into):
    """The run as it was at step 3 (its step 6 removed)."""
    return rewound(made / "run", into, SOURCE, "step_00000006") / SOURCE


def _craft(folder, change) -> None:
    """Alter the model states file, then rebuild the manifest as whoever altered it would."""
    alter(folder / STATES, change, folder)


def _resume(made, data, out):
    return run_ranks(train_cmd(made / "run.yaml", made / "z0.json", data, out), nproc=1, timeout=HANG_GUARD_S)


CRAFTS = {
    "nan_lr": (
        lambda saved: saved["optimizer"]["param_groups"][1].update(lr=float("nan")),
        "optimizer['param_groups'][1]['lr'] is nan, not a finite number",
    ),
    "one_group": (
        lambda saved: saved["optimizer"]["param_groups"].pop(),
        "optimizer['param_groups'] holds 1 group(s), where the model's optimizer has 2",
    ),
}


@pytest.mark.parametrize("kind", sorted(CRAFTS))
def test_altered_zero0_optimizer_state_is_refused_naming_the_file_and_the_field(made, tmp_path, tiny_dataset, kind):
    source = _at_step_3(made, tmp_path / "out")
    alter, field = CRAFTS[kind]
    _craft(source, alter)
    codes, logs = _resume(made, tiny_dataset, tmp_path / "out")
    assert codes == [2], logs[0][-3000:]  # old code, nan_lr: 2 on "the training loss became nan at step 5"
    want = (
        f"error: {source / STATES}: {field}: the checkpoint {source} was altered or damaged after it was saved. "
        "Resume from another checkpoint (--resume PATH), or start a new run with --resume none and another --out"
    )
    assert [line for line in logs[0].splitlines() if line.startswith("error:")] == [want], logs[0][-3000:]
    assert "Traceback" not in logs[0] and "step      4/6" not in logs[0]
    assert sorted(p.name for p in source.parent.iterdir() if p.name.startswith("step_")) == [SOURCE]


def test_an_untouched_zero0_checkpoint_resumes_as_the_uninterrupted_run(made, tmp_path, tiny_dataset):
    _at_step_3(made, tmp_path / "out")
    codes, logs = _resume(made, tiny_dataset, tmp_path / "out")
    assert codes == [0], logs[0][-3000:]
    assert_resumed_as(made / "run", tmp_path / "out", [4, 5, 6])


def _inner_groups(saved) -> list:
    return saved["optimizer"]["optimizer_state_dict"]["param_groups"]


BF16 = {
    "lr": (lambda saved: _inner_groups(saved)[1].update(lr=float("nan")), "[1]['lr'] is nan, not a finite number"),
    "betas": (lambda saved: _inner_groups(saved)[0].update(betas=(0.9,)), "[0]['betas'] is (0.9,), not a pair"),
}


@pytest.mark.parametrize("kind", sorted(BF16))
def test_bf16_at_zero0_keeps_its_groups_in_the_fp16_optimizers_state_and_they_are_checked(made, tmp_path, kind):
    """bf16 at ZeRO 0 writes no bf16_zero_pp_rank_* shard: DeepSpeed wraps the optimizer in its FP16_Optimizer
    (bf16), whose state_dict sits in the model states file with the inner optimizer's under optimizer_state_dict."""
    folder = tmp_path / SOURCE
    shutil.copytree(made / "bf16" / "checkpoints" / SOURCE, folder)
    assert not list(folder.glob("*zero_pp_rank_*"))
    states = folder / STATES
    where = "optimizer['optimizer_state_dict']['param_groups']"
    assert shard_groups_check.model_states_problem(states, groups=2) is None
    assert shard_groups_check.model_states_problem(states, groups=3).startswith(
        f"{states}: {where} holds 2 group(s), where the model's optimizer has 3: "
    )
    alter, field = BF16[kind]
    _craft(folder, alter)
    found = shard_groups_check.model_states_problem(states, groups=2)
    assert found is not None
    assert found.startswith(f"{states}: {where}{field}"), found
