"""keep_on_the_sphere(engine) on DeepSpeed 0.19.8's BF16_Optimizer, with and without a frozen sphere matrix.

DeepSpeed picks BF16_Optimizer (engine._do_optimizer_sanity_check) for bf16 parameters with fp32 gradient
accumulation at ZeRO 1 without CPU offload (`data_types.grad_accum_dtype: "fp32"`), for bf16 under pipeline
parallelism at ZeRO 0, and for bf16 with no optimizer at all. The first is the one a JSON of this repo reaches; no
earlier test ran the hook there with a frozen matrix (requires_grad=False before deepspeed.initialize: a fine-tune
that freezes the embedding). These tests guard that path: no fault was found on it.
"""

import json

import pytest

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

from conftest import REPO, cpu_env, torchrun  # noqa: E402

WORKER = REPO / "tests" / "workers" / "frozen_sphere_worker.py"

CASES = ("frozen_torch_optimizer", "frozen_held_torch_optimizer", "frozen_json_optimizer", "trainable_torch_optimizer")
KEPT = sorted(
    [
        f"model.blocks.{i}.{name}.weight"
        for i in range(2)
        for name in ("attn.qkv", "attn.out", "mlp.up_gate", "mlp.down")
    ]
    + ["model.head.weight"]
)


@pytest.mark.parametrize("nproc", [1, 2])
def test_bf16_optimizer_keeps_the_sphere_and_leaves_a_frozen_matrix_alone(tmp_path, nproc):
    """ZeRO 1 + bf16 + grad_accum_dtype fp32 (BF16_Optimizer), 3 AdamW steps on 1 and 2 gloo ranks: every trainable
    sphere matrix's fp32 master is unit norm within 1e-6 and its bf16 working copy is exactly the master rounded to
    bf16; a frozen embedding is bit for bit what deepspeed.initialize left, with no error from the hook, also when
    the torch optimizer was given it and when it is unfrozen after the hook located the masters."""
    out = tmp_path / "result.json"
    torchrun(WORKER, str(out), "bf16_optimizer", nproc=nproc, env=cpu_env(), timeout=500)
    for rank in range(nproc):
        results = json.loads((tmp_path / f"result.json.{rank}").read_text())
        assert sorted(results) == sorted(CASES)
        assert {name: r.get("error") for name, r in results.items()} == dict.fromkeys(CASES), rank
        for name, r in results.items():
            assert r["optimizer"] == "BF16_Optimizer", (rank, name)
            assert r["trainable_masters"] <= 1e-6, (rank, name, r["trainable_masters"])
            assert r["working_copy_vs_master"] == 0.0, (rank, name, r["working_copy_vs_master"])
            assert r["frozen_identical"] == name.startswith("frozen"), (rank, name)  # a trainable embedding moves
            assert r["frozen_dtype"] == "torch.bfloat16", (rank, name)
            assert r["renormalized_units"] >= 3, (rank, name)
            expected = KEPT if name.startswith("frozen") else sorted(KEPT + ["model.embed.weight"])
            assert r["hook_reports"] == expected, (rank, name, r["hook_reports"])
        # Unfrozen after the hook located the masters, with the torch optimizer holding it: BF16_Optimizer steps and
        # leaves it where it was (bit for bit), so it cannot leave the hypersphere unnoticed. Should DeepSpeed start
        # moving it, this fails: the hook's refusal (_refuse_moving_frozen) must then cover BF16_Optimizer too.
        held = results["frozen_held_torch_optimizer"]
        assert (held["unfrozen"], held["unfrozen_embed_moved"]) == ("stepped", False), rank
