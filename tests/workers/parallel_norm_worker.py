"""Worker for tests/test_gradient_norm_parallel.py: 2 ranks under torchrun, gloo, tensor parallel 2.

usage: parallel_norm_worker.py OUT.json CASE[,CASE...]   (CASE: stage:precision[:tp|sp[:offload]])

For each case it builds the trainer's engine of a small nGPT with tensor parallel 2 (sequence
parallel 2 for :sp; DeepSpeed gets the groups as its mpu; precision fp32, bf16, fp16 or
bf16_fp32_accum, DeepSpeed's BF16_Optimizer; :offload puts the masters on the CPU), gradient
accumulation 2 and a clipping threshold every step exceeds, and beside it, on every rank, the same full model stepped by plain torch: the same AdamW groups
and schedule, the mean loss of the same micro-batches, torch's clip_grad_norm_ and the model's
own renormalization. After every step it records DeepSpeed's global gradient norm against the
reference's, the largest difference of the merged fp32 masters from the reference's weights, the
masters' deviation from unit norm and whether the working copy equals cast(master).
"""

import os
import sys

import torch
import torch.distributed as dist

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from common import ds_config, run_worker, start_test_engine  # noqa: E402
from hypersphere_worker import gather_master, gather_working  # noqa: E402

VOCAB, SEQ, ACCUM, CLIP, STEPS = 64, 16, 2, 0.05, 4


def run_case(stage: int, precision: str, layout: str = "tp", offload: str = "") -> dict:
    from ngpt_ds.model import ModelConfig, build_model, normalize_matrices_, sphere_matrices
    from ngpt_ds.parallel import create_groups, merge_tensor_parallel
    from ngpt_ds.train.config import TrainConfig
    from ngpt_ds.train.hypersphere import HypersphereHook
    from ngpt_ds.train.optim import build_optimizer, build_schedule

    model_cfg = ModelConfig(arch="ngpt", vocab_size=VOCAB, n_layer=2, n_embd=32, n_head=4, seq_len=SEQ).validate()
    train = TrainConfig(max_steps=20, lr=2e-2).resolve("ngpt")
    ds = ds_config(stage, bf16=precision.startswith("bf16"))
    if precision == "bf16_fp32_accum":  # ZeRO 1: DeepSpeed's BF16_Optimizer
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    ds["fp16"] = {"enabled": precision == "fp16", "initial_scale_power": 8}
    if offload:
        ds["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        ds["zero_force_ds_cpu_optimizer"] = False
    ds["gradient_accumulation_steps"] = ACCUM
    ds["gradient_clipping"] = CLIP
    if layout == "sp":  # as the trainer's prepare: ZeRO 3 gets reduce_scatter false
        from ngpt_ds.parallel.sequence import deepspeed_config_for

        deepspeed_config_for(ds, 2)
    groups = create_groups(2) if layout == "tp" else create_groups(1, sp_size=2)
    engine = start_test_engine(model_cfg, train, ds, groups)
    hook = HypersphereHook(engine)
    hook.normalize_now()

    torch.manual_seed(train.seed)  # start_engine's seed: the same initial weights
    reference = build_model(model_cfg)
    normalize_matrices_(reference)
    opt = build_optimizer(reference, lr=train.lr, betas=train.betas, eps=train.eps, weight_decay=train.weight_decay)
    schedule = build_schedule(
        opt, max_steps=train.max_steps, warmup_steps=train.warmup_steps, min_lr_ratio=train.min_lr / train.lr
    )

    def merged_masters():
        mine = {n: gather_master(engine, p) for n, p in engine.module.named_parameters()}
        if layout == "sp":  # whole weights on every rank
            return mine
        per_rank: list[dict] = [{} for _ in range(groups.tp_size)]
        for name in sorted(mine):
            parts = [torch.empty_like(mine[name]) for _ in range(groups.tp_size)]
            dist.all_gather(parts, mine[name].contiguous(), group=groups.tp_group)
            for rank, part in enumerate(parts):
                per_rank[rank][name] = part
        return merge_tensor_parallel(per_rank, reference)

    generator = torch.Generator().manual_seed(5)  # the same batches on both ranks (one replica)
    record: dict = {
        "case": ":".join(
            [str(stage), precision] + ([layout, offload] if offload else [layout] if layout != "tp" else [])
        ),
        "optimizer": type(engine.optimizer).__name__,
        "steps": [],
    }
    for _ in range(STEPS):
        batches = [torch.randint(0, VOCAB, (2, SEQ + 1), generator=generator) for _ in range(ACCUM)]
        for tokens in batches:
            _, loss = engine(tokens[:, :-1], tokens[:, 1:])
            engine.backward(loss)
            engine.step()
        opt.zero_grad()
        for tokens in batches:
            _, loss = reference(tokens[:, :-1], tokens[:, 1:])
            (loss / ACCUM).backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), CLIP).item()
        opt.step()
        schedule.step()
        normalize_matrices_(reference)
        ds_norm = engine.get_global_grad_norm()
        masters = merged_masters()
        ref = dict(reference.named_parameters())
        deviation, working_equal = 0.0, True
        for m in sphere_matrices(engine.module):
            master = gather_master(engine, m.param)
            deviation = max(deviation, (master.norm(dim=m.norm_dim) - 1).abs().max().item())
            working = gather_working(m.param)
            working_equal &= torch.equal(working, master.to(working.dtype))
        record["steps"].append(
            {
                "ds_grad_norm": float("nan") if ds_norm is None else float(ds_norm),
                "ref_grad_norm": ref_norm,
                "max_diff": max((masters[n] - ref[n].detach()).abs().max().item() for n in ref),
                "deviation": deviation,
                "hook_deviation": hook.max_deviation(),
                "working_equals_master": bool(working_equal),
            }
        )
    hook.remove()
    return record


def main():
    out_path, cases = sys.argv[1], sys.argv[2]
    from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

    CPU_Accelerator.is_fp16_supported = lambda self: True  # as tests/workers/precision_worker.py
    run_worker(out_path, lambda: [run_case(int(c[0]), *c[1:]) for c in (c.split(":") for c in cases.split(","))])


if __name__ == "__main__":
    main()
