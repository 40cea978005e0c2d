"""Worker for tests/test_frozen26_bf16_optimizer.py and tests/test_hfx25_frozen_sphere_matrix.py:
keep_on_the_sphere(engine) on a DeepSpeed engine of the Hugging Face nGPT, with its embedding frozen or not.

    torchrun --nproc_per_node N frozen_sphere_worker.py OUT SUITE

Each case: the tiny NGPTForCausalLM (hf_common.tiny_ngpt), AdamW at lr 1e-3, the hook attached, 3 steps, then
what the hook and DeepSpeed hold. SUITE names a table of cases (SUITES); each rank writes {case: result} to
OUT.<rank>.
"""

import sys

import torch
from hf_common import (
    ds_config,
    ended_through_exit_process,
    error_line,
    run_cases,
    start_engine,
    tiny_ngpt,
    token_ids,
    train_step,
    whole_value,
)

from ngpt_ds.hf.trainer import keep_on_the_sphere, release
from ngpt_ds.model.sphere import sphere_matrices
from ngpt_ds.train.hypersphere import RenormalizationMissed


def case(rank, stage, bf16, freeze=True, json_optimizer=False, held=False, fp32_grad_accum=False):
    """`freeze`: the embedding has requires_grad=False before deepspeed.initialize; `json_optimizer`: DeepSpeed
    builds AdamW from the JSON's optimizer block; `held`: the torch optimizer holds the frozen matrix too (then,
    after the 3 steps, it is unfrozen and a 4th step tried); `fp32_grad_accum`: data_types.grad_accum_dtype fp32
    (BF16_Optimizer at ZeRO 1 in bf16)."""
    model = tiny_ngpt()
    frozen = model.model.embed.weight
    if freeze:
        frozen.requires_grad_(False)
    ds = ds_config(stage, bf16)
    if fp32_grad_accum:
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    trainable = list(model.parameters()) if held else [p for p in model.parameters() if p.requires_grad]
    engine = start_engine(model, ds, trainable, lr=1e-3, json_optimizer=json_optimizer)
    before = whole_value(frozen, stage)
    result = {"optimizer": type(engine.optimizer).__name__}
    try:
        hook = keep_on_the_sphere(engine)
    except Exception as e:
        result["error"] = error_line(e)
        return result
    for i in range(3):
        train_step(engine, token_ids(100 * rank + i))
    worst, rounding = 0.0, 0.0
    for m in sphere_matrices(model):
        if m.param is frozen and freeze:
            continue
        master = hook.fp32_value(m.param)
        if bf16 and stage < 3:  # the bf16 working copy is whole on this rank
            rounding = max(rounding, float((master.to(torch.bfloat16).float() - m.param.detach().float()).abs().max()))
        master = master.double()
        worst = max(worst, float((torch.linalg.vector_norm(master, dim=m.norm_dim) - 1).abs().max()))
    after = whole_value(frozen, stage)
    result.update(
        {
            "trainable_masters": worst,
            "working_copy_vs_master": rounding,
            "frozen_identical": bool(torch.equal(before, after)),
            "frozen_dtype": str(after.dtype),
            "hook_reports": sorted(hook.deviations()),
            "renormalized_units": hook.renormalized_units,
        }
    )
    if held:  # unfrozen after the hook located the masters: the next step is refused before anything moves
        frozen.requires_grad_(True)
        weights = [p.detach().clone() for p in model.parameters()]
        ids = token_ids(100 * rank + 3)
        engine.backward(engine(ids, labels=ids, use_cache=False).loss)
        try:
            engine.step()
            result["unfrozen"] = "stepped"
        except RenormalizationMissed as e:
            result["unfrozen"] = str(e)
        result["unfrozen_kept"] = all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
        result["unfrozen_embed_moved"] = not torch.equal(before, frozen.detach())
        result["unfrozen_embed_off"] = float(
            (torch.linalg.vector_norm(frozen.detach().double(), dim=-1) - 1).abs().max()
        )
    release(model)
    engine.destroy()
    return result


SUITES = {
    # DeepSpeed's BF16_Optimizer (ZeRO 1, bf16, fp32 gradient accumulation), embedding frozen or trainable
    "bf16_optimizer": {
        "frozen_torch_optimizer": dict(stage=1, bf16=True, fp32_grad_accum=True),
        "frozen_held_torch_optimizer": dict(stage=1, bf16=True, fp32_grad_accum=True, held=True),
        "frozen_json_optimizer": dict(stage=1, bf16=True, fp32_grad_accum=True, json_optimizer=True),
        "trainable_torch_optimizer": dict(stage=1, bf16=True, fp32_grad_accum=True, freeze=False),
    },
    # every optimizer DeepSpeed 0.19.8 builds, embedding frozen
    "every_optimizer": {
        "zero0_fp32": dict(stage=0, bf16=False),
        "zero0_fp32_held": dict(stage=0, bf16=False, held=True),
        "zero0_bf16_unfused": dict(stage=0, bf16=True),
        "zero0_bf16_json_optimizer": dict(stage=0, bf16=True, json_optimizer=True),
        "zero1_fp32": dict(stage=1, bf16=False),
        "zero2_bf16": dict(stage=2, bf16=True),
        "zero3_fp32": dict(stage=3, bf16=False),
    },
}

if __name__ == "__main__":
    ended_through_exit_process(run_cases, sys.argv[1], SUITES[sys.argv[2]], case)
