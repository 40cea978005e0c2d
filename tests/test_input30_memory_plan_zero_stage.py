"""The startup memory check at the run's ZeRO stage (input30). check_state_fits counted the training state as split
the finest way there is (ZeRO 3 over every rank of the job), whatever the DeepSpeed JSON said: a 0.99B-parameter nGPT
at ZeRO 0 on one node's 2 ranks passed against the node's 23.5 GiB (15.8 GB for the job), while each rank keeps its
own 15.8 GB (31.6 GB on the node): the ranks built the model for over a minute and then ran out of memory (with a
7 GiB limit per rank: "DefaultCPUAllocator: can't allocate memory" in a traceback after 80 s). With the stage, the
precision and the model-parallel size, the check refuses it before anything is built, with the numbers and the fix."""

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model import ModelConfig
from ngpt_ds.train import memory_plan
from ngpt_ds.train.memory_plan import STATE_BYTES_PER_PARAMETER, check_state_fits

NODE = 25_275_000_000  # bytes: the 23.5 GiB of the machine the fault was found on
ONE_BILLION = ModelConfig(arch="ngpt", n_layer=1, n_embd=1024, n_head=8, seq_len=32, mlp_hidden=320000, vocab_size=512)
# 1 x (4 x 1024^2 + 3 x 1024 x 320000) + 512 x 1024 = 987,758,592 parameters


def check(**run) -> None:
    check_state_fits(ONE_BILLION, world_size=2, local_world_size=2, node_bytes=NODE, source="c.yaml", **run)


def test_zero0_on_two_ranks_of_one_node_is_refused_with_the_numbers():
    """Fault: passed at startup (its finest split, 15.8 GB, fits the node), ran out of memory after the build."""
    with pytest.raises(NgptConfigError) as err:
        check(zero_stage=0, precision="fp32")
    assert str(err.value) == (
        "model config (c.yaml): n_layer 1, n_embd 1024, mlp width 320000 and vocabulary 512 make at least 1.0B "
        "parameters; training them takes 16 bytes each (weights, gradients, fp32 master, Adam's moments); at ZeRO "
        "stage 0 in fp32 each rank keeps 16 bytes per parameter, at least 14.7 GiB per rank and 29 GiB on this "
        'node\'s 2 rank(s) of 2, but the node has 24 GiB of memory in all. Set "zero_optimization": {"stage": 3} '
        "in the DeepSpeed JSON (which splits it over all 2 ranks: at least 15 GiB here), or check the model's sizes"
    )


@pytest.mark.parametrize(
    ("stage", "precision", "fits"),
    [
        (0, "fp32", False),
        (0, "bf16", False),
        (1, "bf16", True),
        (1, "fp32", False),
        (2, "bf16", True),
        (3, "fp32", True),
    ],
)
def test_each_stage_counts_what_it_partitions(stage, precision, fits):
    """Bytes per parameter per rank over 2 ZeRO ranks, as estimate_memory counts them: ZeRO 1 halves the optimizer
    state (bf16: 2 + 2 + 12 / 2 = 10, 19.8 GB on the node: fits; fp32 keeps an fp32 copy at ZeRO 1-3 besides its
    weights: 4 + 4 + 12 / 2 = 14, 27.7 GB: does not), ZeRO 2 the gradients too, ZeRO 3 the weights too."""
    expected = {
        (0, "fp32"): 4 + 4 + 8,
        (0, "bf16"): 2 + 2 + 12,
        (1, "bf16"): 2 + 2 + 6,
        (1, "fp32"): 4 + 4 + 6,
        (2, "bf16"): 2 + 1 + 6,
        (3, "fp32"): 2 + 2 + 6,
    }[(stage, precision)]
    assert memory_plan.state_bytes_per_parameter(precision, stage, 2) == expected
    if fits:
        check(zero_stage=stage, precision=precision)
    else:
        with pytest.raises(NgptConfigError, match=rf"at ZeRO stage {stage} in {precision} each rank keeps {expected} "):
            check(zero_stage=stage, precision=precision)


def test_model_parallel_ranks_split_the_model():
    """Tensor or pipeline parallelism over the 2 ranks cuts the model in two: 8 GB a rank at ZeRO 0 fits."""
    check(zero_stage=0, precision="fp32", model_parallel=2)


def test_one_rank_and_the_defaults_keep_the_finest_bound():
    """One rank: 16 bytes a parameter, as before, at every stage in bf16 and fp16 and at ZeRO 0 in fp32 (20 at fp32
    ZeRO 1-3, whose optimizer keeps an fp32 copy of the fp32 weights); the defaults are ZeRO 3's split."""
    for stage in (0, 1, 2, 3):
        for precision in ("fp32", "bf16", "fp16"):
            expected = 20 if precision == "fp32" and stage else STATE_BYTES_PER_PARAMETER
            assert memory_plan.state_bytes_per_parameter(precision, stage, 1) == expected
    check()  # 15.8 GB over the node: fits, as the old check said
    check_state_fits(ONE_BILLION, world_size=1, local_world_size=1, node_bytes=NODE, source="c.yaml", zero_stage=0)
