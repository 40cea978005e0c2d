"""The hypersphere hook renormalizes each sphere matrix where its fp32 master really lies, and the startup check
refuses the DeepSpeed settings that put the masters where the hook cannot follow.

Run as a script (2 gloo ranks, by the fixture below) this file is its own worker: usage
`test_hypersphere_layout.py OUT.json`.
"""

import json
import os
import sys
from pathlib import Path

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.ds_config import check_ds_config

VOCAB, SEQ = 53, 16


def refusal(config: dict) -> str | None:
    try:
        check_ds_config(
            {"train_micro_batch_size_per_gpu": 1, **config},
            world_size=2,
            tensor_parallel=1,
            source="ds.json",
            fp16_supported=True,
            bf16_supported=True,
        )
    except NgptConfigError as err:
        return str(err)
    return None


@pytest.mark.parametrize("stage", [1, 2])
def test_round_robin_gradients_is_refused_at_zero_1_and_2(stage):
    """Fault: `zero_optimization.round_robin_gradients` was accepted. DeepSpeed 0.19 then links each parameter to
    the wrong slice of the fp32 master partition, and the hook renormalized other parameters' values: the weights
    were 0.17 off the sphere after 3 steps on 2 ranks while the logged deviation said 1.5e-7."""
    message = refusal({"zero_optimization": {"stage": stage, "round_robin_gradients": True}})
    assert message is not None
    assert message.startswith("DeepSpeed config ds.json: 1 problem")
    assert "zero_optimization.round_robin_gradients = True: not supported: DeepSpeed links the parameters" in message
    assert "set it to false or remove it" in message
    assert refusal({"zero_optimization": {"stage": stage, "round_robin_gradients": False}}) is None
    assert refusal({"zero_optimization": {"stage": stage}}) is None


def test_round_robin_gradients_is_left_alone_where_deepspeed_ignores_it():
    for stage in (0, 3):
        assert refusal({"zero_optimization": {"stage": stage, "round_robin_gradients": True}}) is None


@pytest.mark.parametrize("key", ["bf16_master_weights_and_grads", "bf16_optimizer_states"])
def test_sixteen_bit_masters_under_the_old_block_name_bfloat16_are_refused(key):
    """Fault: DeepSpeed reads the bf16 block under its old name `bfloat16` when `bf16` is absent, but the master
    weight check looked at `bf16` only, so `"bfloat16": {"enabled": true, "bf16_master_weights_and_grads": true,
    "bf16_optimizer_states": true}` at ZeRO 2 was accepted and DeepSpeed kept bf16 masters (the hook then stopped
    with a NotImplementedError traceback on every rank, a GPT run trained on them)."""
    settings = {"enabled": True, "bf16_master_weights_and_grads": True, "bf16_optimizer_states": True}
    message = refusal({"bfloat16": settings, "zero_optimization": {"stage": 2}})
    assert message is not None
    assert f"bfloat16.{key} = True: 16-bit master weights are not supported" in message
    # "bf16" present: DeepSpeed ignores "bfloat16", and so does the check.
    assert refusal({"bf16": {"enabled": True}, "bfloat16": settings, "zero_optimization": {"stage": 2}}) is None
    assert refusal({"bfloat16": {"enabled": True}, "zero_optimization": {"stage": 2}}) is None


@pytest.mark.parametrize(
    "precision, accumulated", [("fp32", "bf16"), ("bf16", "fp32"), ("bf16", "fp16"), ("bf16", "float32")]
)
def test_zero0_gradient_accumulation_in_another_dtype_is_refused_at_startup(precision, accumulated):
    """Fault: `data_types.grad_accum_dtype` other than the model's precision at ZeRO 0 was accepted, and every rank
    stopped inside deepspeed.initialize in a NotImplementedError traceback ("unsupported mix of
    model_dtype=torch.float32 and grad_accum_dtype=torch.bfloat16"): without ZeRO, DeepSpeed has an optimizer
    holding the fp32 masters only for gradients accumulated in the model's dtype."""
    config = {"bf16": {"enabled": precision == "bf16"}, "data_types": {"grad_accum_dtype": accumulated}}
    message = refusal({**config, "zero_optimization": {"stage": 0}})
    assert message is not None
    assert (
        f"data_types.grad_accum_dtype = '{accumulated}': DeepSpeed accumulates gradients only in the model's "
        f'precision ({precision}) at ZeRO stage 0; set it to "{precision}" or remove it, or set '
        "zero_optimization.stage to 1, 2 or 3"
    ) in message
    assert (
        refusal({**config, "zero_optimization": {"stage": 1}}) is None
    )  # ZeRO: DeepSpeedZeroOptimizer, BF16_Optimizer
    same = {"bf16": {"enabled": precision == "bf16"}, "data_types": {"grad_accum_dtype": precision}}
    assert refusal({**same, "zero_optimization": {"stage": 0}}) is None


@pytest.mark.parametrize("stage", [1, 2])
def test_elastic_checkpoint_is_refused_at_zero_1_and_2(stage):
    """Fault: `zero_optimization.elastic_checkpoint: true` was accepted. A 2-rank ZeRO-2 run trained and saved,
    and its resume stopped every rank in a bare AssertionError traceback in DeepSpeed's
    _load_legacy_checkpoint (`BASE_OPTIMIZER_STATE_STEP in all_state_dict[0]`), and with the key removed in a
    KeyError 'base_optimizer_state_step': no checkpoint of the run could be resumed."""
    message = refusal({"zero_optimization": {"stage": stage, "elastic_checkpoint": True}})
    assert message is not None
    assert (
        "zero_optimization.elastic_checkpoint = True: not supported: DeepSpeed cannot resume the checkpoints it "
        "writes with it for the trainer's AdamW; a resume at another number of ranks needs no setting (the "
        "universal checkpoint); remove it"
    ) in message
    assert refusal({"zero_optimization": {"stage": stage, "elastic_checkpoint": False}}) is None
    for ignored in (0, 3):  # DeepSpeed ignores it there (at 3 with a warning)
        assert refusal({"zero_optimization": {"stage": ignored, "elastic_checkpoint": True}}) is None


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    from conftest import torchrun

    out = tmp_path_factory.mktemp("layout") / "results.json"
    torchrun(Path(__file__), out)
    return json.loads(out.read_text())


def test_the_hook_refuses_a_master_link_that_disagrees_with_the_flat_layout(ranks):
    """Fault: under ZeRO 2 with round_robin_gradients on 2 ranks (past the startup check, as a route it does not
    know would be), the hook trusted DeepSpeed's `_hp_mapping` and renormalized the wrong slices of the fp32
    masters: the model's weights left the sphere while the hook's own deviation, read through the same link,
    stayed at fp32 rounding. It now compares the link with the flat parameter group and stops."""
    for rank in ranks:
        record = rank["round_robin"]
        # The old hook was built, and the weights left the sphere under it.
        assert record["error"] is not None, (
            f"the weights are {record['working_deviation']:.3g} off the sphere, the hook says {record['hook_deviation']:.3g}"
        )
        assert record["error"].startswith(
            "NotImplementedError: nGPT renormalization cannot trust DeepSpeedZeroOptimizer's link of "
        ), record["error"]
        assert "remove it from the DeepSpeed JSON" in record["error"]
        assert "zero_optimization.round_robin_gradients" in record["error"]


@pytest.mark.parametrize("case", ["zero2_fp32", "zero1_bf16_fp32_accum"])
def test_the_link_check_places_every_matrix_and_passes_where_deepspeed_is_right(ranks, case):
    for rank in ranks:
        record = rank[case]
        assert record["error"] is None, record
        assert record["matrices_in_flat"] == record["matrices"] > 0  # every matrix checked, none skipped
        assert record["hook_deviation"] < 1e-6
        if case == "zero2_fp32":  # the model's own weights: fp32 here, so the tolerance is fp32's
            assert record["working_deviation"] < 1e-6


# ---- the worker (2 ranks) --------------------------------------------------------------------------------------


def _case(stage: int, precision: str, round_robin: bool) -> dict:
    import torch
    import torch.distributed as dist
    from common import ds_config, start_test_engine

    from ngpt_ds.model import ModelConfig, sphere_matrices
    from ngpt_ds.train.config import TrainConfig
    from ngpt_ds.train.hypersphere import HypersphereHook

    model = ModelConfig(arch="ngpt", vocab_size=VOCAB, n_layer=2, n_embd=24, n_head=2, seq_len=SEQ, mlp_hidden=37)
    train = TrainConfig(max_steps=50, lr=2e-2).resolve("ngpt")
    ds = ds_config(stage, bf16=precision != "fp32")
    ds["zero_optimization"]["round_robin_gradients"] = round_robin
    if precision == "bf16_fp32_accum":
        ds["data_types"] = {"grad_accum_dtype": "fp32"}  # DeepSpeed's BF16_Optimizer
    engine = start_test_engine(model, train, ds)
    opt = engine.optimizer
    flat = (opt.bf16_groups_flat if hasattr(opt, "bf16_groups_flat") else opt.bit16_groups_flat)[0]
    matrices = sphere_matrices(engine.module)
    record: dict = {
        "optimizer": type(opt).__name__,
        "matrices": len(matrices),
        "matrices_in_flat": sum(
            m.param.data.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr() for m in matrices
        ),
        "error": None,
    }
    try:
        hook = HypersphereHook(engine)
    except NotImplementedError as err:
        record["error"] = f"NotImplementedError: {err}"
        return record
    hook.normalize_now()
    generator = torch.Generator().manual_seed(1 + dist.get_rank())
    for _ in range(3):
        tokens = torch.randint(0, VOCAB, (2, SEQ + 1), generator=generator)
        _, loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()
    record["working_deviation"] = max(
        (m.param.detach().float().norm(dim=m.norm_dim) - 1).abs().max().item() for m in matrices
    )
    record["hook_deviation"] = hook.max_deviation()
    hook.remove()
    return record


def _worker(out: str) -> None:
    from common import every_rank, run_worker

    def work():
        mine = {
            "round_robin": _case(2, "fp32", True),
            "zero2_fp32": _case(2, "fp32", False),
            "zero1_bf16_fp32_accum": _case(1, "bf16_fp32_accum", False),
        }
        return every_rank(mine)

    run_worker(out, work)


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    sys.path.insert(0, str(Path(__file__).resolve().parent / "workers"))
    _worker(sys.argv[1])
