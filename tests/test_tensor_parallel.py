"""Tensor parallelism on real gloo ranks: exact parity with the full model, ZeRO composition,
communication-free renormalization, and fast failure of bad layouts."""

import json
import shutil
import sys

import pytest
import torch

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model import ModelConfig, build_model
from ngpt_ds.parallel import check_tensor_parallel, merge_tensor_parallel, tensor_parallel_plan
from ngpt_ds.parallel.shard import _shard

from conftest import (
    REFERENCE_STEPS,
    REFERENCE_TRAIN,
    REPO,
    read_metrics,
    run,
    tiny_ngpt,
    torchrun,
    train_cmd,
    train_run,
    write_ds_config,
    write_yaml,
)

STEPS = REFERENCE_STEPS  # checkpoints at STEPS / 2 and STEPS


@pytest.fixture(scope="module")
def exact(tmp_path_factory):
    out = tmp_path_factory.mktemp("tp") / "exact.json"
    torchrun(REPO / "tests/workers/tp_worker.py", out, "exact", nproc=2)
    return json.loads(out.read_text())


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_tp2_reproduces_tp1_logits_loss_gradients_and_weights(exact, arch):
    r = exact[arch]
    assert r["weights_match_before"] == 0.0
    assert r["logits_max_diff"] < 1e-5
    assert r["loss_diff"] < 1e-6
    assert r["grad_max_diff"] < 1e-6
    assert r["weights_max_diff_after_5_steps"] < 1e-5
    shapes = r["local_shard_shapes"]
    assert shapes["blocks.0.attn.qkv.weight"] == [48, 32]  # [3d/tp, d]: 2 of 4 heads
    assert shapes["blocks.0.attn.out.weight"] == [32, 16]  # [d, d/tp]
    assert shapes["blocks.0.mlp.up_gate.weight"] == [128, 32]  # [2h/tp, d]
    assert shapes["blocks.0.mlp.down.weight"] == [32, 64]  # [d, h/tp]
    if arch == "ngpt":
        assert shapes["blocks.0.attn.s_qk.param"] == [16] and shapes["blocks.0.mlp.s_u.param"] == [64]
        assert shapes["blocks.0.attn_alpha.param"] == [32]  # acts on the full hidden state: replicated
        assert r["shard_norm_deviation"] < 1e-5  # renormalized shard by shard, no communication


def test_hook_communicates_only_over_data_parallel_groups(tmp_path):
    out = tmp_path / "hook.json"
    torchrun(REPO / "tests/workers/tp_worker.py", out, "hook", nproc=4)
    ranks = json.loads(out.read_text())["ranks"]
    for r in ranks:
        assert r["tp_ranks"] in ([0, 1], [2, 3])  # tensor-parallel ranks are adjacent
        assert len(r["calls_per_step"]) == 4
        for calls in r["calls_per_step"]:
            assert calls == [r["dp_ranks"]]  # one all-reduce, over the data-parallel group
            assert not set(calls[0]) & (set(r["tp_ranks"]) - {ranks.index(r)})
        assert max(r["deviations"]) < 1e-5


def test_tp2_dp2_zero2_trainer_reproduces_single_process(tmp_path, reference_runs):
    """Tensor parallel 2 x data parallel 2 at ZeRO 2 against conftest's single-process ZeRO-0 reference run
    (same model, schedule and global batch of 8)."""
    parallel = write_yaml(tmp_path / "tp.yaml", tiny_ngpt(), {**REFERENCE_TRAIN, "tensor_parallel_size": 2})
    ds4 = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    train_run(parallel, ds4, reference_runs.data, tmp_path / "b", nproc=4)
    a, b = read_metrics(reference_runs["z0_ws1"]), read_metrics(tmp_path / "b")
    assert [m["step"] for m in b] == list(range(1, STEPS + 1))
    assert [m["train/loss"] for m in b] == pytest.approx([m["train/loss"] for m in a], abs=2e-5)
    assert max(m["ngpt/max_norm_deviation"] for m in b) < 1e-5  # every declared matrix, every step
    assert [m["ngpt/s_z_mean"] for m in b] == pytest.approx([m["ngpt/s_z_mean"] for m in a], abs=1e-5)
    # A tensor-parallel checkpoint (one model file per tensor rank) resumes exactly.
    half = tmp_path / "b" / "checkpoints" / f"step_{STEPS // 2:08d}"
    assert sorted(p.name for p in half.glob("mp_rank_*_model_states.pt")) == [
        "mp_rank_00_model_states.pt",
        "mp_rank_01_model_states.pt",
    ]
    shutil.copytree(half, tmp_path / "c" / "checkpoints" / half.name)
    train_run(parallel, ds4, reference_runs.data, tmp_path / "c", nproc=4)
    c = read_metrics(tmp_path / "c")
    assert [m["step"] for m in c] == list(range(STEPS // 2 + 1, STEPS + 1))
    assert [m["train/loss"] for m in c] == [m["train/loss"] for m in b[STEPS // 2 :]]


def test_shard_then_merge_round_trip():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="ngpt", vocab_size=60, n_layer=1, n_embd=24, n_head=6, seq_len=8))
    full = {n: p.detach() for n, p in model.named_parameters()}
    plan = tensor_parallel_plan(model)
    for tp in (2, 3):
        shards = [{n: (_shard(t, plan[n], tp, r) if n in plan else t) for n, t in full.items()} for r in range(tp)]
        merged = merge_tensor_parallel(shards, model)
        assert all(torch.equal(merged[n], full[n]) for n in full)
    # qkv rows of rank 1 of 3: heads 2-3 of q, then of k, then of v.
    rows = plan["blocks.0.attn.qkv.weight"].indices(72, 3, 1).tolist()
    assert rows == list(range(8, 16)) + list(range(32, 40)) + list(range(56, 64))


def test_bad_tensor_parallel_layouts_fail_fast(tmp_path, tiny_dataset):
    with pytest.raises(NgptConfigError) as err:
        check_tensor_parallel(4, 6, n_head=6, vocab_size=50, mlp_width=96)
    text = str(err.value)
    assert "world size 6 is not divisible" in text and "model.n_head = 6" in text and "model.vocab_size = 50" in text
    assert "mlp_hidden" not in text  # 96 divides by 4
    config = write_yaml(
        tmp_path / "tp3.yaml",
        {"arch": "ngpt", "n_layer": 1, "n_embd": 32, "n_head": 2, "seq_len": 32},
        {"max_steps": 2, "tensor_parallel_size": 3},
    )
    proc = run(
        [sys.executable, *train_cmd(config, REPO / "ds_configs/zero2.json", tiny_dataset, tmp_path / "out")],
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "tensor_parallel_size" in proc.stderr
    assert not (tmp_path / "out").exists()
