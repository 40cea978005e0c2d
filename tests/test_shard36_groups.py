"""Faults: a resume checked the param_groups DeepSpeed's load copies from each rank's ZeRO shard for finite numbers
and their count only (8574dac). On 2 gloo ranks resuming step 3 of a 6-step ZeRO 2 run, one shard altered with its
manifest rebuilt:
- a group without 'params' stopped rank 1 on "KeyError: 'params'" and rank 0 on "another rank of the job died";
  amsgrad True stopped rank 1 on "KeyError: 'max_exp_avg_sq'" (exit 1, tracebacks);
- values torch's AdamW refuses (its constructor: lr, eps, weight_decay >= 0, betas in [0, 1)) trained on in silence,
  exit 0: the vectors' group's eps -1e-3 put the loss of step 5 0.56 off the uninterrupted run's; a beta of 1, an lr
  of -0.005; maximize True (gradient ascent on rank 1's partition);
- rank 1's shard with another, legal eps in the vectors' group (1e-6, rank 0's 1e-8) trained rank 1's partition with
  it, in silence (DeepSpeed saves the same groups into every shard; each rank loads its own);
- a 1-rank checkpoint whose shard's vectors' group eps is -1e-3, resumed on 2 ranks: the conversion copied it into
  zero/optimizer_state.pt, universal_check found the copy equal to the source, and the run trained on (exit 0).
Now every rank exits 2 with one line naming the file and the field, before any step; each rank reads only its own
shard and sends its groups' hyperparameters (ngpt_ds.train.shard_groups_check). An untouched checkpoint resumes as
the uninterrupted run."""

from __future__ import annotations

import pytest
from crafted_checkpoints import alter, assert_resumed_as, rewound

from ngpt_ds.train import checkpoint

from conftest import (
    run_launch,
    run_ranks_forked,
    tiny_ngpt,
    tiny_train,
    train_cmd,
    train_flags,
    train_run,
    write_ds_config,
    write_yaml,
)

HANG_GUARD_S = 240  # a hang guard only
SOURCE = "step_00000003"
GROUPS = "optimizer_state_dict['base_optimizer_state']['param_groups']"
TAIL = "Resume from another checkpoint (--resume PATH), or start a new run with --resume none and another --out"


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_dataset):
    """A 2-rank ZeRO 2 run of 6 steps and a 1-rank one (accumulating 2: the same batch), checkpoints at 3 and 6."""
    root = tmp_path_factory.mktemp("shard36_groups")
    write_yaml(root / "run.yaml", tiny_ngpt(), tiny_train(6, checkpoint_interval=3))
    write_ds_config(root / "z2.json", stage=2, bf16=False, micro=2, accum=1)
    done = train_run(root / "run.yaml", root / "z2.json", tiny_dataset, root / "run2", nproc=2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    write_ds_config(root / "z2_dp1.json", stage=2, bf16=False, micro=2, accum=2)
    done = run_launch("train.py", *train_flags(root / "run.yaml", root / "z2_dp1.json", tiny_dataset, root / "run1"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root


def _groups(saved) -> list:
    return saved["optimizer_state_dict"]["base_optimizer_state"]["param_groups"]


def _resume(made, data, out):
    """The 2-rank resume, its ranks forked (run_ranks_forked): these jobs stop at their startup, mostly imports."""
    return run_ranks_forked(train_cmd(made / "run.yaml", made / "z2.json", data, out), nproc=2, timeout=HANG_GUARD_S)


RANK1 = "zero_pp_rank_1_mp_rank_00_optim_states.pt"
CRAFTS = {  # old code: exit codes, and what happened
    "no_params": (lambda s: _groups(s)[1].pop("params"), "[1] lacks 'params'"),  # [1, 1], KeyError: 'params'
    "amsgrad": (  # [1, 1], KeyError: 'max_exp_avg_sq'
        lambda s: _groups(s)[0].update(amsgrad=True),
        "[0]['amsgrad'] is True, where the model's optimizer has False",
    ),
    "maximize": (  # [0, 0]
        lambda s: _groups(s)[0].update(maximize=True),
        "[0]['maximize'] is True, where the model's optimizer has False",
    ),
    "negative_eps": (lambda s: _groups(s)[1].update(eps=-1e-3), "[1]['eps'] is -0.001, not a number >= 0"),  # [0, 0]
    "negative_lr": (lambda s: _groups(s)[1].update(lr=-0.005), "[1]['lr'] is -0.005, not a number >= 0"),  # [0, 0]
    "beta_of_one": (lambda s: _groups(s)[1].update(betas=(0.9, 1.0)), "[1]['betas'][1] is 1, not in [0, 1)"),
    "other_eps": (  # [0, 0]: legal, but not rank 0's
        lambda s: _groups(s)[1].update(eps=1e-6),
        "[1]['eps'] is 1e-06, where zero_pp_rank_0_mp_rank_00_optim_states.pt records 1e-08 (DeepSpeed saves the same "
        "param groups into every rank's shard)",
    ),
}


@pytest.mark.parametrize("kind", sorted(CRAFTS))
def test_rank_1s_altered_shard_is_refused_on_every_rank_naming_the_file_and_the_field(
    made, tmp_path, tiny_dataset, kind
):
    source = rewound(made / "run2", tmp_path / "out", SOURCE, "step_00000006") / SOURCE
    change, field = CRAFTS[kind]
    alter(source / RANK1, change, source)
    codes, logs = _resume(made, tiny_dataset, tmp_path / "out")
    assert codes == [2, 2], logs[0][-3000:]  # old code: [1, 1] (no_params, amsgrad), [0, 0] (the others)
    want = (
        f"error: {source / RANK1}: {GROUPS}{field}: the checkpoint {source} was altered or damaged after it was saved. "
        + TAIL
    )
    for log in logs:
        assert [line for line in log.splitlines() if line.startswith("error:")] == [want], log[-3000:]
        assert "Traceback" not in log and "step      4/6" not in log


def test_an_untouched_checkpoint_resumes_on_two_ranks_as_the_uninterrupted_run(made, tmp_path, tiny_dataset):
    rewound(made / "run2", tmp_path / "out", SOURCE, "step_00000006")
    codes, logs = _resume(made, tiny_dataset, tmp_path / "out")
    assert codes == [0, 0], logs[0][-3000:]
    assert_resumed_as(made / "run2", tmp_path / "out", [4, 5, 6])


def test_a_negative_eps_the_conversion_copies_into_the_universal_folder_is_refused(made, tmp_path, tiny_dataset):
    """A 1-rank checkpoint resumed on 2 ranks: DeepSpeed's converter copies the shard's param_groups into
    zero/optimizer_state.pt, which universal_check compares with the shard (equal), and load_universal loads."""
    source = rewound(made / "run1", tmp_path / "out", SOURCE, "step_00000006") / SOURCE
    alter(source / "zero_pp_rank_0_mp_rank_00_optim_states.pt", lambda s: _groups(s)[1].update(eps=-1e-3), source)
    codes, logs = _resume(made, tiny_dataset, tmp_path / "out")
    assert codes == [2, 2], logs[0][-3000:]  # old code: [0, 0], trained steps 4-6
    universal = source.with_name(SOURCE + checkpoint.UNIVERSAL_SUFFIX)
    want = (
        f"error: {universal / 'zero' / 'optimizer_state.pt'}: ['param_groups'][1]['eps'] is -0.001, not a number >= 0: "
        f"the universal checkpoint {universal} holds optimizer settings no AdamW of this model takes, copied by its "
        "conversion from a checkpoint altered or damaged after it was saved, or altered since (a new conversion copies "
        f"them again). {TAIL}"
    )
    for log in logs:
        assert [line for line in log.splitlines() if line.startswith("error:")] == [want], log[-3000:]
        assert "step      4/6" not in log


UNTOUCHED = {  # name: ZeRO stage, bf16, ranks
    "zero3": (3, False, 2),
    "zero2_bf16": (2, True, 2),
    "zero0_bf16": (0, True, 1),
}


@pytest.mark.parametrize("name", sorted(UNTOUCHED))
def test_untouched_checkpoints_of_other_layouts_pass_the_flags_and_params_comparison(tmp_path, tiny_dataset, name):
    """The live groups' flags and params counts (ZeRO 3: the inner optimizer's; bf16: the FP16_Optimizer's inner
    one at ZeRO 0) are what the shards of an untouched run hold, so its resume continues it exactly."""
    stage, bf16, ranks = UNTOUCHED[name]
    write_yaml(tmp_path / "run.yaml", tiny_ngpt(), tiny_train(6, checkpoint_interval=3))
    ds = write_ds_config(tmp_path / "ds.json", stage=stage, bf16=bf16, micro=2, accum=1)
    if ranks == 1:  # forked, as torchrun's runs of more ranks are (train_run)
        done = run_launch("train.py", *train_flags(tmp_path / "run.yaml", ds, tiny_dataset, tmp_path / "run"))
    else:
        done = train_run(tmp_path / "run.yaml", ds, tiny_dataset, tmp_path / "run", nproc=ranks)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rewound(tmp_path / "run", tmp_path / "out", SOURCE, "step_00000006")
    cmd = train_cmd(tmp_path / "run.yaml", ds, tiny_dataset, tmp_path / "out")
    codes, logs = run_ranks_forked(cmd, nproc=ranks, timeout=HANG_GUARD_S)
    assert codes == [0] * ranks, logs[0][-3000:]
    assert_resumed_as(tmp_path / "run", tmp_path / "out", [4, 5, 6])
