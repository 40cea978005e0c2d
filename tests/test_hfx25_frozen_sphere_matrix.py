"""keep_on_the_sphere(engine) with a sphere matrix frozen (requires_grad=False: a fine-tune that freezes the
embedding), on every optimizer DeepSpeed 0.19.8 builds, on 2 gloo ranks.

Fault: at ZeRO 0 in bf16, DeepSpeed's FP16_UnfusedOptimizer (a torch optimizer passed to deepspeed.initialize) and
FP16_Optimizer (the JSON's "optimizer" block) leave a frozen parameter out of their fp32 masters
(deepspeed.runtime.utils.is_optimized_parameter), and HypersphereHook._locate_whole looked every sphere matrix up
among them: keep_on_the_sphere raised a bare KeyError. At ZeRO 0 in fp32 the hook renormalized the frozen matrix
after every step (the torch optimizer does not move it, the hook's x / ||x|| rounded it), while at ZeRO 1/2/3
(DeepSpeed leaves frozen parameters out of the flat groups) it was left alone. Now a frozen matrix is left alone on
every path: it does not move, so it needs no renormalization.
"""

import json

import pytest

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

from conftest import REPO, cpu_env, torchrun  # noqa: E402

WORKER = REPO / "tests" / "workers" / "frozen_sphere_worker.py"

CASES = {
    "zero0_fp32": "AdamW",
    "zero0_fp32_held": "AdamW",
    "zero0_bf16_unfused": "FP16_UnfusedOptimizer",
    "zero0_bf16_json_optimizer": "FP16_Optimizer",
    "zero1_fp32": "DeepSpeedZeroOptimizer",
    "zero2_bf16": "DeepSpeedZeroOptimizer",
    "zero3_fp32": "DeepSpeedZeroOptimizer_Stage3",
}


def test_a_frozen_sphere_matrix_is_left_alone_and_the_trainable_ones_are_kept_on_the_sphere(tmp_path):
    """Fault: keep_on_the_sphere raised `KeyError: <id>` at ZeRO 0 in bf16 (FP16_UnfusedOptimizer, FP16_Optimizer)
    with the embedding frozen, and at ZeRO 0 in fp32 it rewrote the frozen embedding after every step. Now on every
    path, after 3 AdamW steps on 2 ranks: every trainable sphere matrix's fp32 master is unit norm within 1e-6, the
    frozen embedding is bit for bit what deepspeed.initialize left, and the hook reports the 9 matrices it keeps.
    A torch AdamW at ZeRO 0 in fp32 holding the frozen embedding (the only optimizer that can hold one) does not
    move it either; unfrozen afterwards, its next step is refused, naming it, before any weight moves."""
    out = tmp_path / "result.json"
    torchrun(WORKER, str(out), "every_optimizer", nproc=2, env=cpu_env(), timeout=500)
    kept = sorted(
        [
            f"model.blocks.{i}.{name}.weight"
            for i in range(2)
            for name in ("attn.qkv", "attn.out", "mlp.up_gate", "mlp.down")
        ]
        + ["model.head.weight"]
    )
    for rank in (0, 1):
        results = json.loads((tmp_path / f"result.json.{rank}").read_text())
        assert sorted(results) == sorted(CASES)
        assert {name: result.get("error") for name, result in results.items()} == dict.fromkeys(CASES), rank
        assert {name: result["frozen_identical"] for name, result in results.items()} == dict.fromkeys(CASES, True)
        for name, result in results.items():
            assert result["optimizer"] == CASES[name], (rank, name)
            assert result["trainable_masters"] <= 1e-6, (rank, name, result["trainable_masters"])
            assert result["frozen_identical"], (rank, name)
            assert result["frozen_dtype"] == ("torch.bfloat16" if "bf16" in name else "torch.float32"), (rank, name)
            assert len(result["hook_reports"]) == 9 and result["hook_reports"] == kept, (rank, name)
            assert result["renormalized_units"] >= 3, (rank, name)
        assert results["zero0_fp32_held"]["unfrozen"] == UNFROZEN, rank
        assert results["zero0_fp32_held"]["unfrozen_kept"], rank


UNFROZEN = (
    "model.embed.weight had requires_grad=False when the nGPT renormalization located the master weights, so it "
    "leaves them alone, and AdamW is about to update them: they would leave the hypersphere. After changing "
    "requires_grad, call the hook's rebuild() and then normalize_now(keep_within=4e-6)"
)
