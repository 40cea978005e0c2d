"""Worker for tests/test_hfx25_offload_states.py: keep_on_the_sphere(engine) across engine.offload_states() and
engine.reload_states() at ZeRO 1, 2 and 3.

    torchrun --nproc_per_node 2 offload_states_worker.py OUT

Each case: the tiny NGPTForCausalLM (hf_common.tiny_ngpt), AdamW at lr 1e-2, the hook attached, 1 step, offload
(the hook asked to measure and to locate the masters), reload, 3 steps, then DeepSpeed's own gather of the
masters. Each rank writes {case: result} to OUT.<rank>.
"""

import sys

import torch
from deepspeed.utils import safe_get_full_fp32_param
from hf_common import ds_config, ended_through_exit_process, run_cases, start_engine, tiny_ngpt, token_ids, train_step

from ngpt_ds.hf.trainer import keep_on_the_sphere, release
from ngpt_ds.model.sphere import sphere_matrices
from ngpt_ds.train.hypersphere import RenormalizationMissed

# ZeRO 3 offloads with DeepSpeed's FusedAdam only: the JSON's optimizer block
CASES = {
    "zero1_bf16": dict(stage=1, bf16=True),
    "zero2_fp32": dict(stage=2, bf16=False),
    "zero3_fp32": dict(stage=3, bf16=False),
}


def case(rank, stage, bf16):
    model = tiny_ngpt()
    ds = ds_config(stage, bf16)
    if stage == 3:
        # DeepSpeed 0.19.8's reload_states leaves a persistent parameter (one below this threshold, kept whole on
        # every rank) as its empty partition on 2 ranks, and the next forward fails, hook or not: none here.
        ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    engine = start_engine(model, ds, model.parameters(), lr=1e-2, json_optimizer=stage == 3)
    hook = keep_on_the_sphere(engine)
    train_step(engine, token_ids(100 * rank))
    engine.offload_states()
    try:
        hook.deviations()
        offloaded = "measured"
    except RenormalizationMissed as e:
        offloaded = str(e)
    try:
        hook.rebuild()
        located = f"{sum(len(unit.pieces) for unit in hook.units)} pieces"
    except RenormalizationMissed as e:
        located = str(e)
    engine.reload_states()
    for i in range(1, 4):
        train_step(engine, token_ids(100 * rank + i))
    worst = 0.0
    for m in sphere_matrices(model):  # DeepSpeed's own gather of the masters, not the hook's views
        master = safe_get_full_fp32_param(m.param).double()
        worst = max(worst, float((torch.linalg.vector_norm(master, dim=m.norm_dim) - 1).abs().max()))
    result = {
        "optimizer": type(engine.optimizer).__name__,
        "offloaded": offloaded,
        "located": located,
        "masters": worst,
        "hook_masters": hook.max_deviation(),
        "renormalized_units": hook.renormalized_units,
    }
    release(model)
    engine.destroy()
    return result


if __name__ == "__main__":
    ended_through_exit_process(run_cases, sys.argv[1], CASES, case)
