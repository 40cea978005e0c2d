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

from conftest import cpu_env, torchrun  # noqa: E402

WORKER = r"""
import json, sys, traceback
import deepspeed.ops
deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # not used; its JIT build takes 30 s
import deepspeed, torch
import torch.distributed as dist

from ngpt_ds.hf.configuration_ngpt import CONFIGS
from ngpt_ds.hf.modeling_ngpt import MODELS
from ngpt_ds.hf.trainer import keep_on_the_sphere, release
from ngpt_ds.model import ModelConfig
from ngpt_ds.model.sphere import sphere_matrices
from ngpt_ds.train.hypersphere import RenormalizationMissed

out = sys.argv[1]
deepspeed.init_distributed(dist_backend="gloo")
rank = dist.get_rank()
CASES = {  # name: (ZeRO stage, bf16, the JSON's optimizer block, the torch optimizer holds the frozen matrix)
    "zero0_fp32": (0, False, False, False),
    "zero0_fp32_held": (0, False, False, True),
    "zero0_bf16_unfused": (0, True, False, False),
    "zero0_bf16_json_optimizer": (0, True, True, False),
    "zero1_fp32": (1, False, False, False),
    "zero2_bf16": (2, True, False, False),
    "zero3_fp32": (3, False, False, False),
}


def frozen_value(p, stage):
    if stage == 3:
        with deepspeed.zero.GatheredParameters([p]):
            return p.detach().clone()
    return p.detach().clone()


def case(stage, bf16, json_optimizer, held):
    torch.manual_seed(0)
    config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    model = MODELS["ngpt"](CONFIGS["ngpt"].from_model_config(config))
    frozen = model.model.embed.weight
    frozen.requires_grad_(False)
    ds = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "bf16": {"enabled": bf16},
          "zero_optimization": {"stage": stage}}
    trainable = list(model.parameters()) if held else [p for p in model.parameters() if p.requires_grad]
    if json_optimizer:
        ds["optimizer"] = {"type": "AdamW", "params": {"lr": 1e-3}}
        engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config=ds)
    else:
        engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(trainable, lr=1e-3), config=ds)
    before = frozen_value(frozen, stage)
    result = {"optimizer": type(engine.optimizer).__name__}
    try:
        hook = keep_on_the_sphere(engine)
    except Exception as e:
        result["error"] = traceback.format_exception_only(e)[-1].strip()
        return result
    for i in range(3):
        ids = torch.randint(3, 512, (4, 16), generator=torch.Generator().manual_seed(100 * rank + i))
        engine.backward(engine(ids, labels=ids, use_cache=False).loss)
        engine.step()
    worst, moved = 0.0, 0.0
    for m in sphere_matrices(model):
        if m.param is frozen:
            continue
        master = hook.fp32_value(m.param).double()
        worst = max(worst, float((torch.linalg.vector_norm(master, dim=m.norm_dim) - 1).abs().max()))
    after = frozen_value(frozen, stage)
    result.update({
        "trainable_masters": worst,
        "frozen_identical": bool(torch.equal(before, after)),
        "frozen_dtype": str(after.dtype),
        "hook_reports": sorted(hook.deviations()),
        "renormalized_units": hook.renormalized_units,
    })
    if held:  # unfrozen after the hook located the masters: the next step is refused before anything moves
        frozen.requires_grad_(True)
        weights = [p.detach().clone() for p in model.parameters()]
        ids = torch.randint(3, 512, (4, 16), generator=torch.Generator().manual_seed(100 * rank + 3))
        engine.backward(engine(ids, labels=ids, use_cache=False).loss)
        try:
            engine.step()
            result["unfrozen"] = "stepped"
        except RenormalizationMissed as e:
            result["unfrozen"] = str(e)
        result["unfrozen_kept"] = all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    release(model)
    engine.destroy()
    return result


results = {name: case(*setup) for name, setup in CASES.items()}
with open(f"{out}.{rank}", "w") as f:
    json.dump(results, f)
"""

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
    script, out = tmp_path / "worker.py", tmp_path / "result.json"
    script.write_text(WORKER)
    torchrun(script, str(out), nproc=2, env=cpu_env(), timeout=500)
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
