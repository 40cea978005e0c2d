"""Fault: any change of ZeRO 3's zero_optimization.sub_group_size sent the resume through DeepSpeed's universal
conversion, even when the new value cuts the parameter groups into the very same sub-groups (README "Resuming
at another world size"). DeepSpeed closes a sub-group once it holds sub_group_size elements of the rank's
partition or at the end of a parameter group, so a value above every group's partition (1e9 -> 1e8 for a model
whose partitions hold less) changes nothing. Before: "resuming step 3 saved with zero_optimization.sub_group_size
1000000000 at sub_group_size 100000000 ...: converted it once into the universal checkpoint ..." (hours and
twice the checkpoint's disk on a large model). Now: the checkpoint is loaded as it is ("resumed from ...") and
continues exactly; a value that does change the sub-groups still converts (tests/test_scale19_zero3_sub_groups.py).
"""

import json
import shutil
import sys

import pytest

from conftest import read_metrics, run, tiny_ngpt, tiny_train, torchrun, train_cmd, write_ds_config, write_yaml


def _zero3(path, sub_group_size=None, accum=2):
    ds = write_ds_config(path, stage=3, bf16=False, micro=2, accum=accum)
    if sub_group_size is not None:
        config = json.loads(ds.read_text())
        config["zero_optimization"]["sub_group_size"] = sub_group_size
        ds.write_text(json.dumps(config))
    return ds


@pytest.fixture(scope="module")
def whole_zero3_run(tmp_path_factory, tiny_dataset):
    """6 steps at ZeRO 3 on one rank with DeepSpeed's default sub_group_size, a checkpoint at step 3."""
    folder = tmp_path_factory.mktemp("reshape20_z3")
    config = write_yaml(folder / "run.yaml", tiny_ngpt(), tiny_train(6, checkpoint_interval=3, keep_checkpoints=5))
    whole = folder / "whole"
    run([sys.executable, *train_cmd(config, _zero3(folder / "default.json"), tiny_dataset, whole)])
    return config, whole


def test_a_zero3_resume_with_another_sub_group_size_but_the_same_sub_groups_loads_without_converting(
    whole_zero3_run, tiny_dataset, tmp_path
):
    config, whole = whole_zero3_run
    step3 = whole / "checkpoints" / "step_00000003"
    resumed = tmp_path / "resumed"
    ds = _zero3(tmp_path / "lower.json", 100_000_000)
    proc = run([sys.executable, *train_cmd(config, ds, tiny_dataset, resumed, "--resume", step3)], check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "universal" not in proc.stdout + proc.stderr
    assert f"resumed from {step3} at step 3" in proc.stdout
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir() if "universal" in p.name) == []
    want = {m["step"]: m["train/loss"] for m in read_metrics(whole)}
    got = {m["step"]: m["train/loss"] for m in read_metrics(resumed)}
    assert got == {step: want[step] for step in (4, 5, 6)}


def test_the_plan_converts_only_when_the_sub_groups_differ(whole_zero3_run, tmp_path):
    """The saved sub-groups are read from the checkpoint (DeepSpeed's param_shapes lists one group per ZeRO 3
    sub-group); each is cut again at the new size."""
    from ngpt_ds.train import reshape_plan

    _, whole = whole_zero3_run
    step3 = whole / "checkpoints" / "step_00000003"

    def planned(sub_group_size):
        ds = {"zero_optimization": {"stage": 3, "sub_group_size": sub_group_size}}
        return reshape_plan.plan(step3, reshape_plan.current_layout(ds, 1, 1), tmp_path)

    groups = reshape_plan.saved_sub_groups(step3, data_parallel=1)
    assert groups is not None and len(groups) == 2  # the matrices' and the vectors' parameter groups, whole
    largest = max(groups, key=sum)
    assert planned(1_000_000_000) is None and planned(100_000_000) is None and planned(sum(largest)) is None
    # The largest group's elements before its last parameter reach the size: DeepSpeed cuts it in two.
    assert planned(sum(largest[:-1])) is not None and planned(1000) is not None


def test_on_two_ranks_the_sub_groups_are_cut_from_each_ranks_partition(tmp_path, tiny_dataset):
    """At 2 data-parallel ranks a rank holds half of each parameter: a sub_group_size of the largest group's
    half keeps one sub-group per parameter group, and DeepSpeed loads the checkpoint as it is."""
    from ngpt_ds.train import reshape_plan

    config = write_yaml(tmp_path / "run.yaml", tiny_ngpt(), tiny_train(4, checkpoint_interval=2, keep_checkpoints=5))
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    torchrun(*train_cmd(config, _zero3(tmp_path / "default.json", accum=1), tiny_dataset, whole))
    step2 = whole / "checkpoints" / "step_00000002"
    halves = reshape_plan.saved_sub_groups(step2, data_parallel=2)
    assert halves is not None and len(halves) == 2
    assert [sum(g) for g in halves] == [sum(g) // 2 for g in reshape_plan.saved_sub_groups(step2, data_parallel=1)]
    ds = _zero3(tmp_path / "half.json", max(sum(g) for g in halves), accum=1)
    proc = torchrun(*train_cmd(config, ds, tiny_dataset, resumed, "--resume", step2))
    assert "universal" not in proc.stdout + proc.stderr
    assert f"resumed from {step2} at step 2" in proc.stdout
    want = {m["step"]: m["train/loss"] for m in read_metrics(whole)}
    assert {m["step"]: m["train/loss"] for m in read_metrics(resumed)} == {step: want[step] for step in (3, 4)}


def test_the_sub_group_comparison_follows_deepspeeds_cut():
    """stage3._create_fp16_sub_groups: a sub-group closes once its elements reach the size, or at the end of its
    parameter group. Element counts per parameter of each saved sub-group, the saved size, the new size."""
    from ngpt_ds.train.reshape_plan import same_sub_groups

    # One sub-group per parameter group under both sizes: the groups' ends closed them.
    assert same_sub_groups([[30, 30], [5]], 1000, 61) is True
    assert same_sub_groups([[30, 30], [5]], 1000, 60) is True  # 30 + 30 reaches 60 at the group's end
    assert same_sub_groups([[30, 30], [5]], 1000, 30) is False  # 30 reaches 30: a cut after the first
    # Closed by the size: [30, 30] reached 50; at 60 it closes there too, at 61 it may run on into the next.
    assert same_sub_groups([[30, 30], [30, 30]], 50, 60) is True
    assert same_sub_groups([[30, 30], [30, 30]], 50, 61) is False
    # A prefix reaching the new size cuts earlier.
    assert same_sub_groups([[30, 30, 5]], 65, 31) is False  # 30 + 30 = 60 >= 31: a cut after the second
    assert same_sub_groups([[30, 30, 5]], 65, 61) is True  # 65 >= 61 closes it at its end, as 65 did


def test_a_crafted_shape_of_huge_integers_does_not_hold_the_plan(whole_zero3_run, tmp_path):
    """Crafted model states whose param_shapes hold a shape of 6,000 integers of 2,031 bits each (the largest
    the restricted unpickler reads, 1.5 MB in all): the product of its dimensions took about a minute on every
    rank, at a ZeRO-3 resume with another sub_group_size, and grows with the square of the count (40,000: about
    40 minutes, per shape). Such a shape is no tensor's: the plan converts, as for any unreadable sub-groups."""
    import torch

    from ngpt_ds.train import reshape_plan

    from conftest import fails_after

    _, whole = whole_zero3_run
    crafted = tmp_path / "checkpoints" / "step_00000003"
    shutil.copytree(whole / "checkpoints" / "step_00000003", crafted)
    (states_file,) = crafted.glob("*model_states.pt")
    states = torch.load(states_file, weights_only=False)
    states["param_shapes"][0] = {name: (2**2030,) * 6000 for name in states["param_shapes"][0]}
    torch.save(states, states_file)
    ds = {"zero_optimization": {"stage": 3, "sub_group_size": 100_000_000}}
    with fails_after(20, "the plan of a crafted shape"):
        assert reshape_plan.saved_sub_groups(crafted, data_parallel=1) is None
        assert reshape_plan.plan(crafted, reshape_plan.current_layout(ds, 1, 1), tmp_path) is not None
