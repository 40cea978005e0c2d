"""Fault (session 31): the startup memory check counted a bf16 pipeline at ZeRO 0 as keeping the fp32 master and
Adam's moments whole on every rank. DeepSpeed trains such a pipeline with its BF16_Optimizer, which splits them over
the data-parallel ranks as ZeRO 1 does, so a run that fits (pipeline 2 x data-parallel 2 of a 1B model on one node:
10 bytes a parameter of each rank's half, not 16) was refused at startup, and told to set ZeRO stage 3, which
DeepSpeed's pipeline engine refuses."""

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model import ModelConfig
from ngpt_ds.train.memory_plan import check_state_fits, parameters_at_least, state_bytes_per_parameter

ONE_BILLION = ModelConfig(arch="ngpt", n_layer=2, n_embd=1024, n_head=8, seq_len=32, mlp_hidden=160000, vocab_size=512)


def check(*, node_bytes: int, zero_stage: int = 0, precision: str = "bf16", pipeline: int = 2) -> None:
    check_state_fits(
        ONE_BILLION,
        world_size=4,
        local_world_size=4,
        node_bytes=node_bytes,
        source="c.yaml",
        zero_stage=zero_stage,
        precision=precision,
        model_parallel=pipeline,
        pipeline_parallel=pipeline,
    )


def test_a_bf16_pipeline_at_zero0_counts_the_optimizer_split_over_data_parallel_ranks():
    parameters = parameters_at_least(ONE_BILLION)
    assert state_bytes_per_parameter("bf16", 1, 2) == 2 + 2 + 12 / 2
    split = 10 * parameters / 2 * 4  # bytes on the node: 4 ranks, each half the model at 10 bytes a parameter
    whole = 16 * parameters / 2 * 4  # the old count
    between = int((split + whole) / 2)
    check(node_bytes=between)  # the old code: NgptConfigError '... at ZeRO stage 0 in bf16 each rank keeps 16 bytes'
    with pytest.raises(NgptConfigError) as err:
        check(node_bytes=int(split) - 1)
    assert "at ZeRO stage 0 in bf16 each rank keeps 10 bytes per parameter of its 1/2 of the model" in str(err.value)
    # DeepSpeed's pipeline engine stops on ZeRO 2 and 3: the fix is not "stage": 3.
    assert str(err.value).endswith(
        "A pipeline trains at ZeRO 0 or 1 only: spread it over more ranks and nodes (train.pipeline_parallel_size, "
        "more data-parallel ranks), or check the model's sizes"
    )


@pytest.mark.parametrize(("zero_stage", "precision", "pipeline"), [(0, "bf16", 1), (0, "fp32", 2)])
def test_without_bf16_optimizer_zero0_still_counts_the_whole_optimizer_state(zero_stage, precision, pipeline):
    """No pipeline, or fp32: DeepSpeed keeps the optimizer state whole on every rank at ZeRO 0."""
    parameters = parameters_at_least(ONE_BILLION)
    whole = state_bytes_per_parameter(precision, 0, 4 // pipeline) * parameters / pipeline * 4
    with pytest.raises(NgptConfigError, match=f"at ZeRO stage 0 in {precision}"):
        check(node_bytes=int(whole) - 1, zero_stage=zero_stage, precision=precision, pipeline=pipeline)
    check(node_bytes=int(whole) + 1, zero_stage=zero_stage, precision=precision, pipeline=pipeline)
