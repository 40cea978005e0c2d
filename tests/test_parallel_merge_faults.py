"""Fault: `merge_tensor_parallel`, which generate, evaluate and export use to join a tensor-parallel checkpoint's
per-rank weights, trusted every rank's slice. A rank whose file lacks a parameter stopped generate.py with a
KeyError traceback, a slice of another shape with an IndexError traceback from index_copy_, and a model config
whose sizes do not split over the ranks found (a stray mp_rank file, an altered config.yaml) merged slices
that left rows of torch.empty in the weights: a silently wrong model. Each is now an NgptConfigError naming
the rank, the parameter and both shapes.
"""

import pytest
import torch

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model import ModelConfig, build_model
from ngpt_ds.parallel import merge_tensor_parallel, tensor_parallel_plan
from ngpt_ds.parallel.shard import _shard

TAIL = (
    ". The files (mp_rank_XX, one per tensor-parallel rank) are damaged, altered or from another model, or its "
    "config.yaml is not the one it was trained with; use another checkpoint"
)


def shards_of(model, tp):
    full = {n: p.detach() for n, p in model.named_parameters()}
    plan = tensor_parallel_plan(model)
    return [{n: (_shard(t, plan[n], tp, r) if n in plan else t) for n, t in full.items()} for r in range(tp)]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="ngpt", vocab_size=64, n_layer=1, n_embd=24, n_head=4, seq_len=8))


def refused(shards, model):
    with pytest.raises(NgptConfigError) as err:
        merge_tensor_parallel(shards, model)
    message = str(err.value)
    prefix = "the tensor-parallel checkpoint's weights do not fit its model config: "
    assert message.startswith(prefix) and message.endswith(TAIL), message
    return message[len(prefix) : -len(TAIL)]


def test_a_rank_without_a_parameter_is_named(model):
    shards = shards_of(model, 2)
    del shards[1]["blocks.0.attn.qkv.weight"]
    assert refused(shards, model) == "tensor-parallel rank 1 of 2 holds no blocks.0.attn.qkv.weight"
    shards = shards_of(model, 2)
    del shards[0]["blocks.0.attn_alpha.param"]  # replicated: read from rank 0
    assert refused(shards, model) == "tensor-parallel rank 0 of 2 holds no blocks.0.attn_alpha.param"


def test_a_slice_of_another_shape_is_named_with_both_shapes(model):
    shards = shards_of(model, 2)
    shards[1]["blocks.0.attn.qkv.weight"] = shards[1]["blocks.0.attn.qkv.weight"][:-1]
    assert refused(shards, model) == (
        "tensor-parallel rank 1 of 2 holds blocks.0.attn.qkv.weight of shape [35, 24], where the model's split "
        "over 2 rank(s) needs [36, 24]"
    )
    whole = shards_of(model, 1)[0]["head.weight"]  # an unsplit matrix in a rank's file
    shards = shards_of(model, 2)
    shards[1]["head.weight"] = whole
    assert refused(shards, model) == (
        "tensor-parallel rank 1 of 2 holds head.weight of shape [64, 24], where the model's split over 2 rank(s) "
        "needs [32, 24]"
    )


def test_slices_of_another_dtype_are_named(model):
    shards = shards_of(model, 2)
    shards[1]["embed.weight"] = shards[1]["embed.weight"].to(torch.bfloat16)
    assert (
        refused(shards, model)
        == "tensor-parallel rank 1 of 2 holds embed.weight in torch.bfloat16, rank 0 in torch.float32"
    )


def test_sizes_that_do_not_split_over_the_ranks_found_are_refused_not_merged_with_empty_rows(model):
    """3 rank files for a model of 4 heads and vocabulary 64: the old code merged each rank's 21 vocabulary
    rows into a table of 64, leaving row 63 as whatever torch.empty held."""
    plan = tensor_parallel_plan(model)
    full = {n: p.detach() for n, p in model.named_parameters()}
    shards = [{n: (_shard(t, plan[n], 3, r) if n in plan else t) for n, t in full.items()} for r in range(3)]
    assert refused(shards, model) == (
        "the model's embed.weight has 64 along dim 0, which does not split into 3 tensor-parallel rank(s)"
    )


def test_genuine_slices_merge_exactly(model):
    full = {n: p.detach() for n, p in model.named_parameters()}
    for tp in (2, 4):
        merged = merge_tensor_parallel(shards_of(model, tp), model)
        assert merged.keys() == full.keys() and all(torch.equal(merged[n], full[n]) for n in full)
