"""Worker for tests/test_tensor_parallel.py (torchrun, gloo). Rank 0 writes a JSON result.

mode "exact" (2 ranks, tp 2): each rank builds the full reference model and a tensor-parallel
copy from the same weights, runs the same batch, and compares logits, loss, gradients and
(after 5 AdamW steps with renormalization) weights, merging shards with the package's plan.

mode "hook" (4 ranks, tp 2 x dp 2, ZeRO 2 through DeepSpeed with the groups as mpu): steps
with the hypersphere hook while counting every all-reduce issued inside the hook and the
ranks of its group; checks unit norms of every declared shard after each step.
"""

import copy
import json
import os
import sys

import torch
import torch.distributed as dist

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from ngpt_ds.model import ModelConfig, build_model, normalize_matrices_, sphere_matrices  # noqa: E402
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


def exact(result):
    groups = create_groups(2)
    for arch in ("ngpt", "gpt"):
        torch.manual_seed(0)
        reference = build_model(config(arch))
        tp_model = parallelize(copy.deepcopy(reference), groups)
        tokens = torch.randint(0, 64, (3, 17), generator=torch.Generator().manual_seed(1))
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        ref_logits, ref_loss = reference(inputs, targets)
        tp_logits, tp_loss = tp_model(inputs, targets)
        ref_loss.backward()
        tp_loss.backward()
        record = {
            "logits_max_diff": (torch.cat(gather_tp(tp_logits.detach(), groups), dim=-1) - ref_logits)
            .abs()
            .max()
            .item(),
            "loss_diff": abs(tp_loss.item() - ref_loss.item()),
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


def hook_mode(result):
    from ngpt_ds.train.builder import start_engine
    from ngpt_ds.train.config import RunConfig, TrainConfig
    from ngpt_ds.train.hypersphere import HypersphereHook

    groups = create_groups(2)
    ds = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": False},
        "zero_optimization": {"stage": 2},
        "steps_per_print": 10**9,
    }
    run = RunConfig(
        config_source="test",
        model=config("ngpt"),
        train=TrainConfig(lr=1e-2).resolve("ngpt"),
        deepspeed=ds,
        deepspeed_source="test",
        data_dir="",
        out_dir="",
    )
    engine = start_engine(run, groups)
    hook = HypersphereHook(engine)
    calls = []
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(tensor, *args, group=None, **kwargs):
        calls.append(dist.get_process_group_ranks(group) if group is not None else list(range(dist.get_world_size())))
        return real_all_reduce(tensor, *args, group=group, **kwargs)

    inner = hook._after_inner_step

    def counted_hook(*a, **k):
        dist.all_reduce = counting_all_reduce
        try:
            inner(*a, **k)
        finally:
            dist.all_reduce = real_all_reduce

    hook._handle.remove()
    hook._handle = engine.basic_optimizer.register_step_post_hook(counted_hook)
    hook.normalize_now()
    gen = torch.Generator().manual_seed(10 + groups.dp_rank)  # tensor-parallel ranks share a batch
    deviations, calls_per_step = [], []
    for _ in range(4):
        tokens = torch.randint(0, 64, (2, 17), generator=gen)
        before = len(calls)
        _, loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()
        calls_per_step.append(calls[before:])
        deviations.append(
            max((m.param.detach().norm(dim=m.norm_dim) - 1).abs().max().item() for m in sphere_matrices(engine.module))
        )
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(
        everyone,
        {
            "calls_per_step": calls_per_step,
            "deviations": deviations,
            "dp_ranks": groups.dp_ranks,
            "tp_ranks": groups.tp_ranks,
        },
    )
    result["ranks"] = everyone


def main():
    out_path, mode = sys.argv[1], sys.argv[2]
    from ngpt_ds import distributed
    from ngpt_ds.train.builder import init_process_group

    init_process_group(distributed.discover(), timeout_s=300)  # as the trainer does: gloo on CPU
    result = {}
    {"exact": exact, "hook": hook_mode}[mode](result)
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(result, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    from ngpt_ds.distributed import exit_process

    exit_process(0, joined=True)  # without interpreter teardown while gloo threads may run
