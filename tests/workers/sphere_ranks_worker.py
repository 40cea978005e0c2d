"""Worker for tests/test_hypersphere_ranks.py: 2 ranks under torchrun, gloo.

usage: sphere_ranks_worker.py OUT.json WORK_DIR CASE[,CASE...]

A case is stage:precision:offload (precision fp32, bf16, fp16 or bf16_fp32_accum, the last being
DeepSpeed's BF16_Optimizer). For each it builds the trainer's engine of a small nGPT whose rows
straddle the ZeRO cut, with gradient accumulation 2 and a clipping threshold every step exceeds, and
records after every optimizer step: the deviation from unit norm of every declared norm vector of
the gathered fp32 masters, whether the working copy equals cast(master), whether the step was clipped.
Then it saves a checkpoint, takes two more steps, loads the checkpoint into a new engine as the
trainer does (rebuild, normalize_now(keep_within)), checks it, takes the same two steps and records
whether the masters equal those of the uninterrupted run bit for bit. Rank 0 writes the JSON.
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from common import ds_config, run_worker, start_test_engine  # noqa: E402
from hypersphere_worker import check, gather_master  # noqa: E402

VOCAB, SEQ, ACCUM, CLIP = 53, 16, 2, 0.05


def build(stage: int, precision: str, offload: bool):
    from ngpt_ds.model import ModelConfig
    from ngpt_ds.train.config import TrainConfig
    from ngpt_ds.train.hypersphere import HypersphereHook

    model = ModelConfig(arch="ngpt", vocab_size=VOCAB, n_layer=3, n_embd=24, n_head=2, seq_len=SEQ, mlp_hidden=37)
    train = TrainConfig(max_steps=50, lr=2e-2).resolve("ngpt")
    ds = ds_config(stage, bf16=precision.startswith("bf16"))
    ds["gradient_accumulation_steps"] = ACCUM
    ds["gradient_clipping"] = CLIP
    ds["fp16"] = {"enabled": precision == "fp16", "initial_scale_power": 8}
    if precision == "bf16_fp32_accum":
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    if stage == 3:
        ds["zero_optimization"]["stage3_param_persistence_threshold"] = 100
    if offload:
        ds["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        ds["zero_force_ds_cpu_optimizer"] = False
    ds["zero_optimization"].update(json.loads(os.environ.get("AUDIT_ZERO_EXTRA", "{}")))
    engine = start_test_engine(model, train, ds)
    return engine, HypersphereHook(engine)


def step(engine, generator) -> tuple[float, float]:
    """One optimizer step of ACCUM micro-batches; (mean loss, DeepSpeed's global grad norm)."""
    losses = []
    for _ in range(ACCUM):
        tokens = torch.randint(0, VOCAB, (2, SEQ + 1), generator=generator)
        _, loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    norm = engine.get_global_grad_norm()
    return sum(losses) / ACCUM, float(norm) if norm is not None else float("nan")


def masters(engine) -> list[torch.Tensor]:
    return [gather_master(engine, p) for p in engine.module.parameters()]


def run_case(work: Path, stage: int, precision: str, offload: bool) -> dict:
    engine, hook = build(stage, precision, offload)
    hook.normalize_now()
    generator = torch.Generator().manual_seed(100 + dist.get_rank())
    record = {"case": f"{stage}:{precision}:{'offload' if offload else 'none'}", "steps": [], "grad_norms": []}
    record["optimizer"] = type(engine.optimizer).__name__
    for _ in range(4):
        before = hook.renormalized_units
        _, norm = step(engine, generator)
        record["grad_norms"].append(norm)
        c = check(engine, hook)
        c["renormalized_units"] = hook.renormalized_units - before
        record["steps"].append(c)
    folder = work / record["case"].replace(":", "_")
    engine.save_checkpoint(str(folder), tag="ckpt")
    rng = generator.get_state()
    for _ in range(2):
        step(engine, generator)
    continued = masters(engine)
    hook.remove()

    engine2, hook2 = build(stage, precision, offload)
    hook2.normalize_now()
    engine2.load_checkpoint(str(folder), tag="ckpt")
    hook2.rebuild()
    hook2.normalize_now(keep_within=4e-6)
    record["after_load"] = check(engine2, hook2)
    generator.set_state(rng)
    resumed_steps = []
    for _ in range(2):
        step(engine2, generator)
        resumed_steps.append(check(engine2, hook2))
    record["resumed_steps"] = resumed_steps
    resumed = masters(engine2)
    record["resume_exact"] = all(torch.equal(a, b) for a, b in zip(continued, resumed))
    record["resume_max_diff"] = max((a - b).abs().max().item() for a, b in zip(continued, resumed))
    hook2.remove()
    return record


def main():
    out_path, work, cases = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

    CPU_Accelerator.is_fp16_supported = lambda self: True  # as tests/workers/precision_worker.py

    def all_cases():
        out = []
        for c in cases.split(","):
            stage, precision, offload = c.split(":")
            out.append(run_case(work, int(stage), precision, offload == "offload"))
        return out

    run_worker(out_path, all_cases)


if __name__ == "__main__":
    main()
