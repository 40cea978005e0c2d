"""Worker for tests/test_precision.py: the first optimizer step's size for every precision x ZeRO stage.

Run as one process (torchrun --nproc_per_node 1). For each case it builds the trainer's engine
(`start_engine`, the same seed, so the same initial weights) with the hypersphere hook, takes one
step on one fixed batch and records mean |W_1 - W_0| / lr over every parameter, read from the fp32
master weights. With Adam the first update is lr * g / (|g| + eps) per element, so the number
depends on the gradients only through their signs and on how they compare with eps: a missing
or doubled loss-scale division shows up as a different number, bf16/fp16 rounding hardly does.

fp16 on CPU: DeepSpeed's CPU accelerator refuses fp16 unless the CPU has AVX512-FP16/AMX. The
worker declares fp16 supported (`CPU_Accelerator.is_fp16_supported`), so DeepSpeed's own fp16
path (FP16_UnfusedOptimizer at ZeRO 0, the ZeRO optimizers' loss scaler at 1-3) runs on CPU,
with CPU fp16 arithmetic. Rank 0 writes one JSON file of results.
"""

import os
import sys

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from common import ds_config, run_worker, start_test_engine  # noqa: E402
from hypersphere_worker import gather_master  # noqa: E402  (the same fp32-master accessor)

VOCAB, SEQ = 64, 16


def allow_fp16_on_cpu() -> None:
    from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

    CPU_Accelerator.is_fp16_supported = lambda self: True


def first_step(stage: int, precision: str, offload: bool, lr: float) -> dict:
    from ngpt_ds.model import ModelConfig
    from ngpt_ds.train.config import TrainConfig
    from ngpt_ds.train.hypersphere import HypersphereHook

    model = ModelConfig(arch="ngpt", vocab_size=VOCAB, n_layer=2, n_embd=32, n_head=2, seq_len=SEQ)
    train = TrainConfig(max_steps=10, lr=lr).resolve("ngpt")
    ds = ds_config(stage, micro_batch=4, bf16=precision.startswith("bf16"))
    ds["fp16"] = {"enabled": precision == "fp16"}
    if precision == "bf16_fp32_accum":  # ZeRO 1: DeepSpeed's BF16_Optimizer instead of the ZeRO optimizer
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    if offload:  # as ds_configs/zero2_offload.json: the torch optimizer steps on the CPU copy
        ds["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        ds["zero_force_ds_cpu_optimizer"] = False
    engine = start_test_engine(model, train, ds)
    hook = HypersphereHook(engine)
    hook.normalize_now()
    params = list(engine.module.parameters())
    before = [gather_master(engine, p) for p in params]
    tokens = torch.randint(0, VOCAB, (4, SEQ + 1), generator=torch.Generator().manual_seed(7))
    _, loss = engine(tokens[:, :-1], tokens[:, 1:])
    engine.backward(loss)
    engine.step()
    after = [gather_master(engine, p) for p in params]
    delta = torch.cat([(a - b).abs().flatten() for a, b in zip(after, before)])
    hook.remove()
    return {
        "stage": stage,
        "precision": precision,
        "offload": offload,
        "optimizer": type(engine.optimizer).__name__,
        "loss": loss.item(),
        "skipped": bool(getattr(engine, "skipped_steps", 0)),
        "mean_update_over_lr": delta.mean().item() / lr,
    }


def main():
    out_path, cases, lr = sys.argv[1], sys.argv[2], float(sys.argv[3])  # cases: stage:precision:offload,...
    allow_fp16_on_cpu()
    run_worker(
        out_path,
        lambda: [
            first_step(int(stage), precision, offload == "offload", lr)
            for stage, precision, offload in (c.split(":") for c in cases.split(","))
        ],
    )


if __name__ == "__main__":
    main()
