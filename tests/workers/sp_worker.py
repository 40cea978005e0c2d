"""Worker for tests/test_sequence_parallel.py (torchrun, gloo). Rank 0 writes a JSON result.

mode "exact" (2 ranks, sp 2): each rank builds the full reference model and a sequence-parallel copy
from the same weights, feeds both the same full windows, and compares the gathered chunk logits, the
loss and the gradients summed over the sequence group (what DeepSpeed's reduction does).

mode "hook" (4 ranks, sp 2 x dp 2, ZeRO stage from argv, through start_engine with the groups as mpu):
steps with the hypersphere hook while recording the ranks of every all-reduce issued inside the hook;
reads the gathered fp32 masters' norms after each step.
"""

import os
import sys

import torch
import torch.distributed as dist

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from common import ds_config, run_worker, start_test_engine, steps_with_hook_all_reduces, twins  # noqa: E402

from ngpt_ds.model import ModelConfig, sphere_matrices  # noqa: E402
from ngpt_ds.parallel.sequence import create_sequence_groups, parallelize_sequence  # noqa: E402


def config(arch):
    return ModelConfig(arch=arch, vocab_size=64, n_layer=2, n_embd=32, n_head=4, seq_len=32).validate()


def exact(_stage):
    groups = create_sequence_groups(2)
    result = {}
    for arch in ("ngpt", "gpt"):
        run = twins(config(arch), parallelize_sequence, groups)
        chunks = [torch.empty_like(run.logits) for _ in range(groups.sp_size)]
        dist.all_gather(chunks, run.logits.detach().contiguous(), group=groups.sp_group)
        grad_diff = 0.0
        for p, q in zip(run.parallel.parameters(), run.reference.parameters()):
            summed = p.grad.clone()
            dist.all_reduce(summed, group=groups.sp_group)
            grad_diff = max(grad_diff, (summed - q.grad).abs().max().item())
        result[arch] = {
            "chunk_shape": list(run.logits.shape),
            "logits_max_diff": (torch.cat(chunks, dim=1) - run.ref_logits).abs().max().item(),
            "loss_diff": abs(run.loss.item() - run.ref_loss.item()),
            "grad_max_diff": grad_diff,
            "grad_norm": torch.cat([q.grad.flatten() for q in run.reference.parameters()]).norm().item(),
        }
    return result


def hook_mode(stage):
    from ngpt_ds.train.config import TrainConfig
    from ngpt_ds.train.hypersphere import HypersphereHook

    groups = create_sequence_groups(2)
    ds = ds_config(stage)
    if stage == 3:
        ds["zero_optimization"]["reduce_scatter"] = False
    train = TrainConfig(lr=1e-2, sequence_parallel_size=2).resolve("ngpt")
    engine = start_test_engine(config("ngpt"), train, ds, groups)
    hook = HypersphereHook(engine)

    def deviation():
        return max(
            (hook.fp32_value(m.param).norm(dim=m.norm_dim) - 1).abs().max().item()
            for m in sphere_matrices(engine.module)
        )

    # seeded by dp_rank: the ranks of one sequence share a sample
    mine = steps_with_hook_all_reduces(engine, hook, 3, 32, 10 + groups.dp_rank, deviation)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, {**mine, "sp_ranks": groups.sp_ranks, "dp_ranks": groups.dp_ranks})
    return {"ranks": everyone}


def main():
    out_path, mode = sys.argv[1], sys.argv[2]
    stage = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    run_worker(out_path, lambda: {"exact": exact, "hook": hook_mode}[mode](stage))


if __name__ == "__main__":
    main()
