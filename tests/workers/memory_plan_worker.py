"""The optimizer state DeepSpeed really holds against ngpt_ds.train.memory_plan's estimate, per precision and ZeRO
stage, on one rank: the fp32 masters that are copies (not the model's own parameters) and Adam's moments."""

import sys

import torch
from common import ds_config, run_worker, start_test_engine

CASES = [("fp32", 0), ("fp32", 1), ("fp32", 2), ("fp32", 3), ("bf16", 0), ("bf16", 2)]


def masters_of(engine) -> list[torch.Tensor]:
    opt = engine.optimizer
    for name in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups", "fp32_groups_flat_partition"):
        if hasattr(opt, name):
            return list(getattr(opt, name))
    if hasattr(opt, "fp32_groups"):  # ZeRO 0 with bf16/fp16: FP16_UnfusedOptimizer
        return [t for group in opt.fp32_groups for t in group]
    return [p for group in opt.param_groups for p in group["params"]]  # ZeRO 0 fp32: the model's own


def work():
    from ngpt_ds.model import ModelConfig
    from ngpt_ds.train.config import TrainConfig
    from ngpt_ds.train.memory_plan import estimate_memory

    model = ModelConfig(arch="ngpt", vocab_size=64, n_layer=2, n_embd=64, n_head=2, seq_len=16, mlp_hidden=96)
    out = {}
    for precision, stage in CASES:
        ds = ds_config(stage, bf16=precision == "bf16")
        engine = start_test_engine(model, TrainConfig(max_steps=5, lr=1e-2).resolve("ngpt"), ds)
        tokens = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(0))
        _, loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()  # Adam's moments exist after the first step
        own = {p.untyped_storage().data_ptr() for p in engine.module.parameters()}
        copies = [t for t in masters_of(engine) if t.untyped_storage().data_ptr() not in own]
        torch_optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)
        moments = [
            t
            for state in torch_optimizer.state.values()
            for t in state.values()
            if torch.is_tensor(t) and t.numel() > 1
        ]
        estimate = estimate_memory(model, micro_batch=2, precision=precision, zero_stage=stage, zero_ranks=1)
        out[f"{precision} zero{stage}"] = {
            "held": sum(t.numel() * t.element_size() for t in copies + moments),
            "estimated": estimate.optimizer,
        }
    return out


if __name__ == "__main__":
    run_worker(sys.argv[1], work)
