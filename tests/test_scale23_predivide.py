"""gradient_predivide_factor against DeepSpeed 0.19.8: where it stops deepspeed.initialize, and where it equals
the averaging group and the gradients come out too small (ZeRO 3 without reduce_scatter, the layout the
trainer uses under sequence parallelism; ZeRO 2 under sequence parallelism)."""

import json

import pytest

from ngpt_ds.train.ds_compat import predivide_factor_problem

from conftest import read_metrics, tiny_ngpt, tiny_train, train_run, write_ds_config, write_yaml


def _config(factor, stage, reduce_scatter=None) -> dict:
    zero: dict = {"stage": stage}
    if reduce_scatter is not None:
        zero["reduce_scatter"] = reduce_scatter
    return {"gradient_predivide_factor": factor, "zero_optimization": zero}


@pytest.mark.parametrize("stage", [2, 3])
def test_a_factor_with_reduce_scatter_is_refused_before_deepspeed_stops_in_initialize(stage):
    """Fault: accepted, then every rank stopped in deepspeed.initialize (AssertionError "gradient_predivide_factor
    != 1.0 is not yet supported with ZeRO-2 with reduce scatter enabled")."""
    for config in (_config(2.0, stage), _config(3.0, stage, True)):
        assert predivide_factor_problem(config, stage=stage, averaging_ranks=2) == (
            f"DeepSpeed does not support it at ZeRO stage {stage} with reduce_scatter (its default) and stops in "
            'deepspeed.initialize: set "zero_optimization": {"reduce_scatter": false}, or remove it'
        )


def test_a_factor_equal_to_the_averaging_ranks_is_refused_where_deepspeed_divides_wrongly():
    """Fault: ZeRO 3 without reduce_scatter (always so under sequence parallelism) and ZeRO 2 under sequence
    parallelism trained with gradients too small by the factor (measured below for ZeRO 3)."""
    message = predivide_factor_problem(_config(2, 3, False), stage=3, averaging_ranks=2)
    assert message == (
        "equal to the 2 ranks the gradients are averaged over, DeepSpeed divides the gradients wrongly at ZeRO 3 "
        "without reduce_scatter (every update too small); use another value, e.g. 1.0 (its default), or remove it"
    )
    for stage in (2, 3):
        assert predivide_factor_problem(
            _config(4.0, stage, False), stage=stage, averaging_ranks=4, sequence_parallel=2
        ) == (
            "equal to the 4 ranks the gradients are averaged over, DeepSpeed divides the gradients wrongly at "
            f"ZeRO {stage} without reduce_scatter and train.sequence_parallel_size = 2 (every update too small); "
            "use another value, e.g. 1.0 (its default), or remove it"
        )
    assert "stops in" not in predivide_factor_problem(_config(2.0, 3), stage=3, averaging_ranks=2, sequence_parallel=2)


def test_factors_that_come_out_right_pass():
    for config, stage, ranks, sp in (
        (_config(1.0, 3), 3, 2, 1),
        ({"zero_optimization": {"stage": 3}}, 3, 2, 1),
        (_config(4.0, 3, False), 3, 2, 1),  # not the group size: undone exactly
        (_config(2.0, 2, False), 2, 2, 1),  # ZeRO 2 without sequence parallelism
        (_config(2.0, 1), 1, 2, 2),  # ZeRO 1 (measured right under sequence parallelism too)
        (_config(2.0, 0), 0, 2, 1),
        (_config(3.0, 3), 3, 4, 2),  # ZeRO 3 under sequence parallelism, another factor
    ):
        assert predivide_factor_problem(config, stage=stage, averaging_ranks=ranks, sequence_parallel=sp) is None


def test_a_factor_equal_to_the_ranks_at_zero3_is_refused_by_the_trainer(tmp_path, tiny_dataset):
    """The measurement behind the refusal, on 2 gloo ranks, before it was wired into startup (5b70444): factor 2.0
    with reduce_scatter off gave half factor 1.0's gradient norm (0.0671 against 0.1342). Now launch/train.py
    stops both ranks at startup naming the field; factor 1.0 trains."""
    config = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(1))
    results = {}
    for factor in (1.0, 2.0):
        ds = write_ds_config(tmp_path / f"f{factor}.json", stage=3, bf16=False, micro=4, accum=1)
        raw = json.loads(ds.read_text())
        raw["zero_optimization"]["reduce_scatter"] = False
        raw["gradient_predivide_factor"] = factor
        ds.write_text(json.dumps(raw))
        results[factor] = train_run(config, ds, tiny_dataset, tmp_path / f"out{factor}", nproc=2, check=False)
    assert results[1.0].returncode == 0, results[1.0].stderr[-3000:]
    assert read_metrics(tmp_path / "out1.0")[0]["train/grad_norm"] > 0
    refused = results[2.0]
    assert refused.returncode == 1 and "(exitcode: 2)" in refused.stderr, refused.stderr[-3000:]
    assert (
        "  - gradient_predivide_factor = 2.0: equal to the 2 ranks the gradients are averaged over, DeepSpeed divides "
        "the gradients wrongly at ZeRO 3 without reduce_scatter (every update too small); use another value, e.g. "
        "1.0 (its default), or remove it"
    ) in refused.stderr.splitlines(), refused.stderr[-3000:]
