"""Worker for tests/test_sequence_parallel.py (torchrun, gloo). Rank 0 writes a JSON result.

mode "exact" (2 ranks, sp 2): each rank builds the full reference model and a sequence-parallel copy
from the same weights, feeds both the same full windows, and compares the gathered chunk logits, the
loss and the gradients summed over the sequence group (what DeepSpeed's reduction does).

mode "hook" (4 ranks, sp 2 x dp 2, ZeRO stage from argv, through start_engine with the groups as mpu):
steps with the hypersphere hook while recording the ranks of every all-reduce issued inside the hook;
reads the gathered fp32 masters' norms after each step.
"""

import copy
import json
import os
import sys

import torch
import torch.distributed as dist

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from ngpt_ds.model import ModelConfig, build_model, sphere_matrices  # noqa: E402
from ngpt_ds.parallel.sequence import create_sequence_groups, parallelize_sequence  # noqa: E402


def config(arch):
    return ModelConfig(arch=arch, vocab_size=64, n_layer=2, n_embd=32, n_head=4, seq_len=32).validate()


def exact(result, _stage):
    groups = create_sequence_groups(2)
    for arch in ("ngpt", "gpt"):
        torch.manual_seed(0)
        reference = build_model(config(arch))
        sp_model = parallelize_sequence(copy.deepcopy(reference), groups)
        tokens = torch.randint(0, 64, (3, 33), generator=torch.Generator().manual_seed(1))
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        ref_logits, ref_loss = reference(inputs, targets)
        sp_logits, sp_loss = sp_model(inputs, targets)
        ref_loss.backward()
        sp_loss.backward()
        chunks = [torch.empty_like(sp_logits) for _ in range(groups.sp_size)]
        dist.all_gather(chunks, sp_logits.detach().contiguous(), group=groups.sp_group)
        grad_diff = 0.0
        for p, q in zip(sp_model.parameters(), reference.parameters()):
            summed = p.grad.clone()
            dist.all_reduce(summed, group=groups.sp_group)
            grad_diff = max(grad_diff, (summed - q.grad).abs().max().item())
        result[arch] = {
            "chunk_shape": list(sp_logits.shape),
            "logits_max_diff": (torch.cat(chunks, dim=1) - ref_logits).abs().max().item(),
            "loss_diff": abs(sp_loss.item() - ref_loss.item()),
            "grad_max_diff": grad_diff,
            "grad_norm": torch.cat([q.grad.flatten() for q in reference.parameters()]).norm().item(),
        }


def hook_mode(result, stage):
    from ngpt_ds.train.builder import start_engine
    from ngpt_ds.train.config import RunConfig, TrainConfig
    from ngpt_ds.train.hypersphere import HypersphereHook, full_fp32_value

    groups = create_sequence_groups(2)
    ds = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": False},
        "zero_optimization": {"stage": stage, **({"reduce_scatter": False} if stage == 3 else {})},
        "steps_per_print": 10**9,
    }
    run = RunConfig(
        config_source="test",
        model=config("ngpt"),
        train=TrainConfig(lr=1e-2, sequence_parallel_size=2).resolve("ngpt"),
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
    gen = torch.Generator().manual_seed(10 + groups.dp_rank)  # the ranks of one sequence share a sample
    deviations, calls_per_step = [], []
    for _ in range(3):
        tokens = torch.randint(0, 64, (2, 33), generator=gen)
        before = len(calls)
        _, loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()
        calls_per_step.append(calls[before:])
        deviations.append(
            max(
                (full_fp32_value(m.param).norm(dim=m.norm_dim) - 1).abs().max().item()
                for m in sphere_matrices(engine.module)
            )
        )
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(
        everyone,
        {
            "calls_per_step": calls_per_step,
            "deviations": deviations,
            "sp_ranks": groups.sp_ranks,
            "dp_ranks": groups.dp_ranks,
        },
    )
    result["ranks"] = everyone


def main():
    out_path, mode = sys.argv[1], sys.argv[2]
    stage = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    from ngpt_ds import distributed
    from ngpt_ds.train.builder import init_process_group

    init_process_group(distributed.discover(), timeout_s=300)  # as the trainer does: gloo on CPU
    result = {}
    {"exact": exact, "hook": hook_mode}[mode](result, stage)
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(result, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    from ngpt_ds.distributed import exit_process

    exit_process(0, joined=True)  # without interpreter teardown while gloo threads may run
