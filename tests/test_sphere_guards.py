"""The hypersphere hook under NCCL's rules, and the trainer's guards around it, on 2 real gloo ranks.

NCCL takes CUDA tensors only; a gloo group whose backend is bound to another device type
refuses CPU tensors the same way ("No backend type associated with device type cpu"). ZeRO-Offload
keeps the fp32 masters (and the hook's norm sums) on the CPU while the engine's device is the GPU,
so every project collective must run on the engine's device (ngpt_ds.train.collectives).
"""

import json

import deepspeed
import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.ds_config import check_ds_config

from conftest import REPO, torchrun

PARTS = "refusing,offload,resume,nan,overflow,not_run,health,tp"


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_dataset):
    work = tmp_path_factory.mktemp("sphere_guards")
    out = work / "results.json"
    torchrun(REPO / "tests/workers/sphere_guard_worker.py", out, tiny_dataset, work / "runs", PARTS, timeout=900)
    return json.loads(out.read_text())


def part(results, name):
    ranks = results[name]
    for r in ranks:
        assert "error" not in r, r["error"]
    return ranks


def test_norm_sums_are_reduced_on_the_communication_device_not_the_masters(results):
    for r in part(results, "refusing"):
        # The group bound only to a non-CPU device type refuses a CPU buffer: NCCL's rule, on CPU.
        assert r["master_device_error"] == "No backend type associated with device type cpu"
        # Told the communication device, the hook hands the group a tensor on it, and it is accepted.
        # (meta holds no data, so only the copy of the result back to the CPU master can fail.)
        assert r["comm_device_devices"] == ["meta"]
        assert r["comm_device_error"] == "NotImplementedError: Cannot copy out of meta tensor; no data!"
        # On a group that takes the CPU, with the CPU as communication device, the sums are exact.
        assert r["cpu_devices"] == ["cpu"]
        assert r["cpu_sums_relative_error"] < 1e-6


@pytest.mark.parametrize("run", ["zero2_offload", "zero3_offload"])
def test_every_project_collective_runs_on_the_engine_device_under_offload(results, run):
    for r in part(results, "offload"):
        record = r[run]
        assert record["steps"] == 3
        engine_device = record["engine_device"]
        assert record["comm_devices"] == [engine_device]
        callers = {c["caller"] for c in record["calls"]}
        functions = {c["fn"] for c in record["calls"]}
        # The hook: before step 0, 3 steps, 3 log lines (norm sums, then the maximum over the job);
        # the trainer's per-step flags (3) and evaluate (2).
        assert len(record["calls"]) >= 15 and functions == {"all_reduce"}
        for call in record["calls"]:
            assert call["devices"] == [engine_device], call
        # Every one goes through the single function that moves buffers to the communication device.
        assert callers == {"ngpt_ds/train/collectives.py"}


def test_resume_from_bf16_weights_renormalizes_the_masters_before_the_first_step(results):
    for r in part(results, "resume"):
        assert r["resumed_at"] == 2
        assert r["deviation_before_save"] < 1e-5
        assert r["deviation_after_load"] < 1e-5  # rebuilt from bf16: ~1e-3 off the sphere without it


def test_a_nan_master_row_stops_the_trainer_naming_step_and_matrix(results):
    for r in part(results, "nan"):
        assert r["raised"] is not None, r  # the loss stayed finite: only the sphere check sees it
        assert r["step"] == 2  # stopped in step 3, the first step after the NaN appeared
        assert "step 3" in r["raised"] and "embed.weight" in r["raised"] and "nan" in r["raised"]


def test_a_master_row_whose_norm_overflows_is_named_with_its_matrix(results):
    """Fault: a row of 1e20s (finite; its squared norm overflows fp32) was flagged by the hook, but its row was
    renormalized to zeros, finite when re-read, so the message named no matrix: "(gone again when re-read)"."""
    for r in part(results, "overflow"):
        assert r["raised"] is not None and r["step"] == 2, r
        assert "sphere matrix embed.weight (norm off by 1) became non-finite" in r["raised"], r["raised"]


def test_an_applied_step_without_renormalization_fails_loudly(results):
    for r in part(results, "not_run"):
        assert r["raised"] is not None, r
        assert r["step"] == 1
        message = r["raised"]
        assert message.startswith("RenormalizationMissed: ")
        assert "step 2" in message and f"DeepSpeed {deepspeed.__version__}" in message
        assert "DeepSpeedZeroOptimizer" in message and "AdamW" in message


def test_tensor_parallel_deviation_is_the_maximum_over_the_whole_job(results):
    ranks = part(results, "tp")
    assert sorted(r["tp_rank"] for r in ranks) == [0, 1]
    for r in ranks:
        assert r["before"] < 1e-5
        assert r["after"] == pytest.approx(1.0, abs=1e-5)  # rank 1's shards have norm 2, seen on rank 0 too


@pytest.mark.parametrize("block", ["offload_optimizer", "offload_param"])
def test_nvme_offload_is_refused_at_startup(block):
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3, block: {"device": "nvme"}}}
    with pytest.raises(NgptConfigError) as err:
        check_ds_config(
            config, world_size=1, tensor_parallel=1, source="z3_nvme.json", fp16_supported=False, bf16_supported=True
        )
    text = str(err.value)
    assert "z3_nvme.json" in text and f"zero_optimization.{block}.device = 'nvme'" in text and '"cpu"' in text
    cpu = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3, block: {"device": "cpu"}}}
    check_ds_config(
        cpu, world_size=1, tensor_parallel=1, source="z3_cpu.json", fp16_supported=False, bf16_supported=True
    )


def test_ngpt_health_at_zero0_bf16_reads_the_fp32_master_not_the_bf16_working_copy(results):
    for r in part(results, "health"):
        assert r["optimizer"] == "FP16_UnfusedOptimizer"
        assert r["from_master"] != r["from_working_copy"]  # bf16 rounding: the test can tell them apart
        assert r["logged"] == r["from_master"]


SIXTEEN_BIT_MASTERS = [
    ("bf16", {"enabled": True, "bf16_master_weights_and_grads": True}, "bf16.bf16_master_weights_and_grads"),
    (
        "bf16",
        {"enabled": True, "bf16_master_weights_and_grads": True, "bf16_optimizer_states": True},
        "bf16.bf16_optimizer_states",
    ),
    ("fp16", {"enabled": True, "fp16_master_weights_and_grads": True}, "fp16.fp16_master_weights_and_grads"),
]


@pytest.mark.parametrize("block, settings, field", SIXTEEN_BIT_MASTERS, ids=[f for _, _, f in SIXTEEN_BIT_MASTERS])
def test_sixteen_bit_master_weights_are_refused_at_startup(block, settings, field):
    """DeepSpeed accepts bf16 masters (and bf16 Adam moments) at ZeRO 1-3: every renormalization then rounds
    to bf16 and the small late Adam updates are lost, without a word (deviation 3.9e-3 against 1.8e-7)."""
    config = {"train_micro_batch_size_per_gpu": 1, block: settings, "zero_optimization": {"stage": 2}}
    with pytest.raises(NgptConfigError) as err:
        check_ds_config(
            config, world_size=1, tensor_parallel=1, source="z2_masters.json", fp16_supported=True, bf16_supported=True
        )
    text = str(err.value)
    assert "z2_masters.json" in text and f"{field} = True" in text and "16-bit master weights" in text
    settings = {k: v for k, v in settings.items() if k == "enabled"}
    check_ds_config(
        {**config, block: settings},
        world_size=1,
        tensor_parallel=1,
        source="z2.json",
        fp16_supported=True,
        bf16_supported=True,
    )


DEEPSPEED_OWN_OPTIMIZER_OFFLOADS = [
    ({"offload_optimizer": {"device": "cpu", "ratio": 0.5}}, "zero_optimization.offload_optimizer.ratio = 0.5"),
    (
        {"offload_optimizer": {"device": "cpu", "super_offload": True}},
        "zero_optimization.offload_optimizer.super_offload = True",
    ),
    ({"zenflow": {"topk_ratio": 0.1}}, "zero_optimization.zenflow = "),
]


@pytest.mark.parametrize("zero, field", DEEPSPEED_OWN_OPTIMIZER_OFFLOADS, ids=["ratio", "super_offload", "zenflow"])
def test_offloads_that_need_deepspeeds_own_optimizer_are_refused_at_startup(zero, field):
    """They stopped inside deepspeed.initialize on every rank ('Hybrid Optimizer Only Supports DeepSpeedCPUAdam',
    or a TypeError in ZenFlow) after the process group had started."""
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3, **zero}}
    with pytest.raises(NgptConfigError) as err:
        check_ds_config(
            config, world_size=1, tensor_parallel=1, source="z3_off.json", fp16_supported=False, bf16_supported=True
        )
    text = str(err.value)
    assert "z3_off.json" in text and field in text and "AdamW" in text
    whole = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {"stage": 3, "offload_optimizer": {"ratio": 1.0}},
    }
    check_ds_config(whole, world_size=1, tensor_parallel=1, source="z3.json", fp16_supported=False, bf16_supported=True)


def test_normalize_matrices_keeps_a_zero_row_zero():
    """The unsharded renormalization (model construction, tensor-parallel shards): 0/0 would be NaN."""
    import torch

    from ngpt_ds.model import ModelConfig, build_model, normalize_matrices_

    model = build_model(ModelConfig(arch="ngpt", vocab_size=64, n_layer=1, n_embd=32, n_head=2, seq_len=16))
    with torch.no_grad():
        model.embed.weight[5].zero_()
    normalize_matrices_(model)
    weight = model.embed.weight.detach()
    assert torch.equal(weight[5], torch.zeros(32))
    others = torch.cat([weight[:5], weight[6:]]).norm(dim=1)
    assert (others - 1).abs().max().item() < 1e-6
