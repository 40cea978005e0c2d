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
CASES = {  # name: (freeze the embedding, the JSON's optimizer block, the torch optimizer holds the frozen matrix)
    "frozen_torch_optimizer": (True, False, False),
    "frozen_held_torch_optimizer": (True, False, True),
    "frozen_json_optimizer": (True, True, False),
    "trainable_torch_optimizer": (False, False, False),
}


def frozen_value(p, stage):
    if stage == 3:
        with deepspeed.zero.GatheredParameters([p]):
            return p.detach().clone()
    return p.detach().clone()


def case(freeze, json_optimizer, held):
    stage, bf16 = 1, True
    torch.manual_seed(0)
    config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    model = MODELS["ngpt"](CONFIGS["ngpt"].from_model_config(config))
    frozen = model.model.embed.weight
    if freeze:
        frozen.requires_grad_(False)
    ds = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "bf16": {"enabled": bf16},
          "zero_optimization": {"stage": stage},
          "data_types": {"grad_accum_dtype": "fp32"}}
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
    worst, rounding = 0.0, 0.0
    for m in sphere_matrices(model):
        if m.param is frozen and freeze:
            continue
        master = hook.fp32_value(m.param)
        rounding = max(rounding, float((master.to(torch.bfloat16).float() - m.param.detach().float()).abs().max()))
        master = master.double()
        worst = max(worst, float((torch.linalg.vector_norm(master, dim=m.norm_dim) - 1).abs().max()))
    after = frozen_value(frozen, stage)
    result.update({
        "trainable_masters": worst,
        "working_copy_vs_master": rounding,
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
        result["unfrozen_embed_moved"] = not torch.equal(before, frozen.detach())
        result["unfrozen_embed_off"] = float((torch.linalg.vector_norm(frozen.detach().double(), dim=-1) - 1).abs().max())
    release(model)
    engine.destroy()
    return result


results = {name: case(*setup) for name, setup in CASES.items()}
with open(f"{out}.{rank}", "w") as f:
    json.dump(results, f)
"""

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
    script, out = tmp_path / "worker.py", tmp_path / "result.json"
    script.write_text(WORKER)
    torchrun(script, str(out), nproc=nproc, env=cpu_env(), timeout=500)
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
