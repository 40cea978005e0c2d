"""Fault: a step_N-universal folder (the universal checkpoint a resume at another data-parallel size converts once and
reuses, README "Resuming at another world size") whose zero/optimizer_state.pt was altered, with its manifest rebuilt
to match, was loaded as it was: universal_check (red34) looked at the per-parameter files only. DeepSpeed's load
copies that file's param_groups (lr, betas, eps, weight_decay) into the optimizer, and at ZeRO 3 gives every parameter
its state[0]['step']. On 2 gloo ranks resuming a 1-rank checkpoint of step 3 of a 6-step run:
- ZeRO 2, param_groups cut to one group: DeepSpeed's zip() left the vectors' group without its loaded masters and Adam
  moments, and the run trained on in silence (exit 0, the loss of step 4 4.2e-3 off the uninterrupted run's);
- ZeRO 2, the vectors' group's lr NaN: step 4 trained with it and the run stopped at step 5 on "the training loss
  became nan at step 5 ... Hints: lower train.lr (now 0.01)";
- ZeRO 3, state[0]['step'] 7 where the checkpoint is at 3: Adam's bias correction of step 7, in silence (exit 0, the
  loss of step 5 2.6e-3 off).

Now the last rank compares optimizer_state.pt with what DeepSpeed's converter writes from the source's first optimizer
shard (ngpt_ds.train.universal_check.global_state_problem), and every rank stops with exit 2 and one line naming the
file and the field, before DeepSpeed reads it. An untouched ZeRO 3 folder is still reused and continues the run."""

from __future__ import annotations

import pytest
import torch
from crafted_checkpoints import alter, assert_resumed_as, rewound

from ngpt_ds.train import checkpoint, universal_check

from conftest import (
    convert_universal,
    start_ranks,
    tiny_ngpt,
    tiny_train,
    train_cmd,
    train_run,
    write_ds_config,
    write_yaml,
)

HANG_GUARD_S = 240  # a hang guard only
SOURCE = "step_00000003"
UNIVERSAL = SOURCE + checkpoint.UNIVERSAL_SUFFIX
SHARD = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_dataset):
    """For ZeRO 2 and 3: a 1-rank run of 6 steps (checkpoints at 3 and 6) whose checkpoints/ also holds the universal
    conversion of step 3 that a resume on 2 ranks makes (the converter child and the trainer's seal)."""
    root = tmp_path_factory.mktemp("univ35_optimizer_state")
    write_yaml(root / "run.yaml", tiny_ngpt(), tiny_train(6, checkpoint_interval=3))
    for stage in (2, 3):
        write_ds_config(root / f"z{stage}_dp2.json", stage=stage, bf16=False, micro=2, accum=1)
        run = root / f"run{stage}"
        ds = write_ds_config(root / f"z{stage}_dp1.json", stage=stage, bf16=False, micro=2, accum=2)
        train_run(root / "run.yaml", ds, tiny_dataset, run, forked=True)
        convert_universal(run / "checkpoints" / SOURCE, run / "checkpoints" / UNIVERSAL, timeout=HANG_GUARD_S)
    return root


def _groups(saved: dict, stage: int) -> list:
    """The param_groups DeepSpeed's load reads: ZeRO 3's inner optimizer_state_dict's."""
    return saved["optimizer_state_dict"]["param_groups"] if stage == 3 else saved["param_groups"]


CRAFTS = {
    "one_group": lambda saved, stage: _groups(saved, stage).pop(),
    "nan_lr": lambda saved, stage: _groups(saved, stage)[1].update(lr=float("nan")),
    "betas": lambda saved, stage: _groups(saved, stage)[0].update(betas=(0.9, 0.5)),
    "weight_decay": lambda saved, stage: _groups(saved, stage)[0].update(weight_decay=0.1),
    "extra_key": lambda saved, stage: saved.update(injected=1),
    "loss_scale": lambda saved, stage: setattr(saved["loss_scaler"], "cur_scale", 1024.0),
    "step": lambda saved, stage: saved["optimizer_state_dict"]["state"][0].update(step=torch.tensor(7.0)),
    "no_state": lambda saved, stage: saved["optimizer_state_dict"].update(state={}),
}


def _copy(made, stage: int, into):
    """The 1-rank run as it was at step 3 (its step 6 removed), with its universal conversion of step 3."""
    return rewound(made / f"run{stage}", into, SOURCE, "step_00000006") / UNIVERSAL


def _craft(universal, stage: int, kind: str) -> None:
    """Alter zero/optimizer_state.pt, then rebuild the manifest as whoever altered it would."""
    alter(universal / "zero" / universal_check.OPTIMIZER_STATE, lambda saved: CRAFTS[kind](saved, stage), universal)


def _resume_on_two_ranks(made, stage: int, data, out, logs):
    """`out` resumed on 2 ranks to step 6 (the same schedule: nothing of the optimizer is changed by the resume)."""
    ranks = start_ranks(train_cmd(made / "run.yaml", made / f"z{stage}_dp2.json", data, out), nproc=2, logs=logs)
    try:
        codes = [rank.wait(timeout=HANG_GUARD_S) for rank in ranks]
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
    return codes, [(logs / f"rank{r}.log").read_text() for r in range(2)]


REFUSED = {
    (2, "one_group"): "param_groups holds 1 item(s), where {shard} records 2",
    (2, "nan_lr"): "param_groups[1]['lr'] is nan, where {shard} records 0.005",
    (3, "step"): "optimizer_state_dict['state'][0]['step'] is 7, where {shard} records 3",
}


@pytest.mark.parametrize(("stage", "kind"), sorted(REFUSED))
def test_an_altered_optimizer_state_is_refused_on_every_rank_naming_the_field(
    made, tmp_path, tiny_dataset, stage, kind
):
    universal = _copy(made, stage, tmp_path / "out")
    _craft(universal, stage, kind)
    codes, logs = _resume_on_two_ranks(made, stage, tiny_dataset, tmp_path / "out", tmp_path)
    assert codes == [2, 2], logs[0][-3000:]
    path = universal / "zero" / universal_check.OPTIMIZER_STATE
    source = tmp_path / "out" / "checkpoints" / SOURCE
    want = (
        f"error: {path}: {REFUSED[stage, kind].format(shard=SHARD)}: the universal checkpoint {UNIVERSAL} does not hold "
        f"the optimizer state of {source}, which it was converted from; it was altered or damaged after its "
        f"conversion. Remove {universal} and rerun: the trainer converts the checkpoint again"
    )
    for log in logs:
        errors = [line for line in log.splitlines() if line.startswith("error:")]
        assert errors == [want], log[-3000:]
        assert "Traceback" not in log and "step      4/6" not in log
    assert not (tmp_path / "out" / "checkpoints" / "step_00000006").exists()


def test_an_untouched_zero3_universal_folder_is_reused_and_continues_the_run(made, tmp_path, tiny_dataset):
    _copy(made, 3, tmp_path / "out")
    codes, logs = _resume_on_two_ranks(made, 3, tiny_dataset, tmp_path / "out", tmp_path)
    assert codes == [0, 0], logs[0][-3000:]
    assert "reused the universal checkpoint" in logs[0]
    assert_resumed_as(made / "run3", tmp_path / "out", [4, 5, 6])


FIELDS = {
    (2, "betas"): "param_groups[0]['betas'][1] is 0.5, where {shard} records 0.95",
    (2, "weight_decay"): "param_groups[0]['weight_decay'] is 0.1, where {shard} records 0.0",
    (2, "extra_key"): "the file holds the key 'injected', which {shard} does not record",
    (2, "loss_scale"): "loss_scaler['cur_scale'] is 1024.0, where {shard} records 1.0",
    (3, "one_group"): "optimizer_state_dict['param_groups'] holds 1 item(s), where {shard} records 2",
    (3, "nan_lr"): "optimizer_state_dict['param_groups'][1]['lr'] is nan, where {shard} records 0.005",
    (3, "no_state"): "optimizer_state_dict['state'] lacks the key 0, which {shard} records",
}


@pytest.mark.parametrize(("stage", "kind"), sorted(FIELDS))
def test_each_field_deepspeed_copies_is_compared_with_the_source(made, tmp_path, stage, kind):
    """The other fields of optimizer_state.pt, on the check alone (the end-to-end refusal is the same line)."""
    universal = _copy(made, stage, tmp_path / "out")
    source = tmp_path / "out" / "checkpoints" / SOURCE
    assert universal_check.global_state_problem(universal, source, stage == 3) is None
    _craft(universal, stage, kind)
    found = universal_check.global_state_problem(universal, source, stage == 3)
    path = universal / "zero" / universal_check.OPTIMIZER_STATE
    assert found is not None and found.startswith(f"{path}: {FIELDS[stage, kind].format(shard=SHARD)}: the "), found


def test_a_missing_or_foreign_optimizer_state_is_named(made, tmp_path):
    universal = _copy(made, 2, tmp_path / "out")
    source = tmp_path / "out" / "checkpoints" / SOURCE
    path = universal / "zero" / universal_check.OPTIMIZER_STATE
    path.unlink()
    assert universal_check.global_state_problem(universal, source, False).startswith(f"{path}: is missing: the ")
    torch.save([1, 2], path)
    found = universal_check.global_state_problem(universal, source, False)
    assert found.startswith(f"{path}: the file holds a list, where {SHARD} records a dict: the "), found
