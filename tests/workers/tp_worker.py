"""Worker for tests/test_tensor_parallel.py (torchrun, gloo). Rank 0 writes a JSON result.

mode "exact" (2 ranks, tp 2): each rank builds the full reference model and a tensor-parallel
copy from the same weights, runs the same batch, and compares logits, loss, gradients and
(after 5 AdamW steps with renormalization) weights, merging shards with the package's plan.

mode "hook" (4 ranks, tp 2 x dp 2, ZeRO 2 through DeepSpeed with the groups as mpu): steps
with the hypersphere hook while counting every all-reduce issued inside the hook and the
ranks of its group; checks unit norms of every declared shard after each step.
"""

import os
import sys

import torch
import torch.distributed as dist

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from common import ds_config, run_worker, start_test_engine, steps_with_hook_all_reduces, twins  # noqa: E402

from ngpt_ds.model import ModelConfig, normalize_matrices_, sphere_matrices  # noqa: E402
from ngpt_ds.parallel import create_groups, merge_tensor_parallel, parallelize  # noqa: E402


def config(arch):
    return ModelConfig(arch=arch, vocab_size=64, n_layer=2, n_embd=32, n_head=4, seq_len=16).validate()


def gather_tp(tensor, groups):
    parts = [torch.empty_like(tensor) for _ in range(groups.tp_size)]
    dist.all_gather(parts, tensor.contiguous(), group=groups.tp_group)
    return parts


def merged(model_tp, reference, groups, grads=False):
    mine = {n: (p.grad if grads else p.detach()) for n, p in model_tp.named_parameters()}
    per_rank = [dict() for _ in range(groups.tp_size)]
    for name in sorted(mine):
        for rank, part in enumerate(gather_tp(mine[name], groups)):
            per_rank[rank][name] = part
    return merge_tensor_parallel(per_rank, reference)


def max_diff(a: dict, b: dict) -> float:
    return max((a[n] - b[n]).abs().max().item() for n in b)


def exact():
    groups = create_groups(2)
    result = {}
    for arch in ("ngpt", "gpt"):
        run = twins(config(arch), parallelize, groups)
        reference, tp_model, inputs, targets = run.reference, run.parallel, run.inputs, run.targets
        record = {
            "logits_max_diff": (torch.cat(gather_tp(run.logits.detach(), groups), dim=-1) - run.ref_logits)
            .abs()
            .max()
            .item(),
            "loss_diff": abs(run.loss.item() - run.ref_loss.item()),
            "grad_max_diff": max_diff(
                merged(tp_model, reference, groups, grads=True), {n: p.grad for n, p in reference.named_parameters()}
            ),
            "weights_match_before": max_diff(merged(tp_model, reference, groups), dict(reference.named_parameters())),
            "local_shard_shapes": {n: list(p.shape) for n, p in tp_model.named_parameters() if "blocks.0." in n},
        }
        opts = [
            torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
            for m in (reference, tp_model)
        ]
        for step in range(5):
            for m, opt in zip((reference, tp_model), opts):
                if step:  # step 0 reuses the gradients above
                    opt.zero_grad()
                    _, loss = m(inputs, targets)
                    loss.backward()
                opt.step()
                if arch == "ngpt":
                    normalize_matrices_(m)  # tensor-parallel shards: purely local
        record["weights_max_diff_after_5_steps"] = max_diff(
            merged(tp_model, reference, groups), {n: p.detach() for n, p in reference.named_parameters()}
        )
        if arch == "ngpt":
            record["shard_norm_deviation"] = max(
                (m.param.detach().norm(dim=m.norm_dim) - 1).abs().max().item() for m in sphere_matrices(tp_model)
            )
        result[arch] = record
    return result


def hook_mode():
    from ngpt_ds.train.config import TrainConfig
    from ngpt_ds.train.hypersphere import HypersphereHook

    groups = create_groups(2)
    engine = start_test_engine(config("ngpt"), TrainConfig(lr=1e-2).resolve("ngpt"), ds_config(2), groups)
    hook = HypersphereHook(engine)

    def deviation():
        return max(
            (m.param.detach().norm(dim=m.norm_dim) - 1).abs().max().item() for m in sphere_matrices(engine.module)
        )

    # seeded by dp_rank: tensor-parallel ranks share a batch
    mine = steps_with_hook_all_reduces(engine, hook, 4, 16, 10 + groups.dp_rank, deviation)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, {**mine, "dp_ranks": groups.dp_ranks, "tp_ranks": groups.tp_ranks})
    return {"ranks": everyone}


def main():
    out_path, mode = sys.argv[1], sys.argv[2]
    run_worker(out_path, {"exact": exact, "hook": hook_mode}[mode])


if __name__ == "__main__":
    main()
