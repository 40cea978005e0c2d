"""A ZeRO-3 checkpoint resumed with another zero_optimization.sub_group_size (README "Resuming at another
world size")."""

import json
import sys

from ngpt_ds.train import reshape_plan as reshape

from conftest import read_metrics, run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml


def _zero3(path, sub_group_size=None):
    ds = write_ds_config(path, stage=3, bf16=False, micro=2, accum=2)
    if sub_group_size is not None:
        config = json.loads(ds.read_text())
        config["zero_optimization"]["sub_group_size"] = sub_group_size
        ds.write_text(json.dumps(config))
    return ds


def test_a_zero3_resume_with_other_sub_groups_converts_and_continues_exactly(tmp_path, tiny_dataset):
    """Fault: ZeRO 3 saves each rank's optimizer state by sub-group (sub_group_size elements of its fp32
    partition each), and the resume loaded it only into the same sub-groups. A resume whose DeepSpeed JSON
    lowered sub_group_size (the ZeRO-3 memory knob) built the engine and then stopped in DeepSpeed's load
    with a traceback: "ValueError: loaded state dict contains a parameter group that doesn't match the
    size of optimizer's group". Before: that traceback, no step trained. Now: the checkpoint goes through
    the universal conversion (kept per parameter), one line says so, and the next losses equal those of
    the uninterrupted run."""
    config = write_yaml(tmp_path / "run.yaml", tiny_ngpt(), tiny_train(6, checkpoint_interval=3, keep_checkpoints=5))
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run([sys.executable, *train_cmd(config, _zero3(tmp_path / "default.json"), tiny_dataset, whole)])
    step3 = whole / "checkpoints" / "step_00000003"
    proc = run(
        [
            sys.executable,
            *train_cmd(config, _zero3(tmp_path / "small.json", 1000), tiny_dataset, resumed, "--resume", step3),
        ],
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    universal = resumed / "checkpoints" / "step_00000003-universal"
    assert [line for line in proc.stdout.splitlines() if "universal checkpoint" in line] == [
        "resuming step 3 saved with zero_optimization.sub_group_size 1000000000 at sub_group_size 1000 "
        f"(data-parallel size 1, ZeRO 3): converted it once into the universal checkpoint {universal}, loaded it "
        "and renormalized the sphere matrices"
    ]
    want = {m["step"]: m["train/loss"] for m in read_metrics(whole)}
    got = {m["step"]: m["train/loss"] for m in read_metrics(resumed)}
    assert got == {step: want[step] for step in (4, 5, 6)}
    assert max(m["ngpt/max_norm_deviation"] for m in read_metrics(resumed)) < 1e-5


def test_the_plan_converts_only_for_other_zero3_sub_groups(tmp_path):
    """The sub-group size is compared at ZeRO 3 only (DeepSpeed's default 1e9 when left out; a float from
    the JSON counts as its integer), and a ZeRO 1/2 config's sub_group_size, which DeepSpeed ignores, is
    not read."""
    z3 = {"zero_optimization": {"stage": 3}}
    assert reshape.sub_group_size_of(z3, 3) == 1_000_000_000
    assert reshape.sub_group_size_of({"zero_optimization": {"stage": 3, "sub_group_size": 1e8}}, 3) == 100_000_000
    assert reshape.sub_group_size_of({"zero_optimization": {"stage": 2, "sub_group_size": 1000}}, 2) is None
    assert reshape.sub_group_size_of({"zero_optimization": {"sub_group_size": float("inf")}}, 3) is None
    assert reshape.current_layout(z3, 2, 1).sub_group_size == 1_000_000_000
    assert reshape.current_layout({"zero_optimization": {"stage": 1, "sub_group_size": 5}}, 2, 1).sub_group_size is None
