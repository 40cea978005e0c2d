"""What the torchrun test workers share: their process frame, a small engine built by the trainer's
start_engine, and the hypersphere hook's all-reduces recorded step by step.

Importable as `common` from any worker: torchrun runs a worker as a script, which puts this folder
first on sys.path.
"""

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def run_worker(out_path: str, work: Callable[[], object], timeout_s: int = 300) -> None:
    """Join the process group as the trainer does (gloo on CPU), run `work` on every rank, write
    what rank 0's call returns to `out_path` as JSON, leave the group and end the process through
    exit_process: no interpreter teardown while gloo threads may still run."""
    from ngpt_ds import distributed
    from ngpt_ds.train.builder import init_process_group

    init_process_group(distributed.discover(), timeout_s=timeout_s)
    result = work()
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(result, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()
    distributed.exit_process(0, joined=True)


def every_rank(mine: object) -> list:
    """Every rank's `mine`, in rank order: what a worker returns so rank 0 writes all the answers."""
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone


def ds_config(stage: int, micro_batch: int = 2, bf16: bool = False) -> dict:
    """A DeepSpeed JSON for one small step: no accumulation, clipping 1.0, no periodic prints."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": bf16},
        "zero_optimization": {"stage": stage},
        "steps_per_print": 10**9,
    }


def start_test_engine(model, train, ds: dict, groups=None):
    """The trainer's engine (start_engine) of a ModelConfig, a resolved TrainConfig and a DeepSpeed
    dict, without data or a run folder; `groups`: the parallel groups passed as DeepSpeed's mpu."""
    from ngpt_ds.train.builder import start_engine
    from ngpt_ds.train.config import RunConfig

    run = RunConfig(
        config_source="test",
        model=model.validate(),
        train=train.validate(),
        deepspeed=ds,
        deepspeed_source="test",
        data_dir="",
        out_dir="",
    )
    return start_engine(run, groups)


@dataclass
class Twins:
    """A full model and its parallelized copy (the same weights), each after a forward and a
    backward of the same batch."""

    reference: torch.nn.Module
    parallel: torch.nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    ref_logits: torch.Tensor
    ref_loss: torch.Tensor
    logits: torch.Tensor
    """this rank's logits of the parallel copy"""
    loss: torch.Tensor


def twins(model_cfg, parallelize: Callable, groups) -> Twins:
    """Build the full model (seed 0) and `parallelize(copy, groups)` of it, and run both forward and
    backward on one batch of 3 random sequences (tokens below 64, seed 1), the same on every rank."""
    from ngpt_ds.model import build_model

    torch.manual_seed(0)
    reference = build_model(model_cfg)
    parallel = parallelize(copy.deepcopy(reference), groups)
    tokens = torch.randint(0, 64, (3, model_cfg.seq_len + 1), generator=torch.Generator().manual_seed(1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    ref_logits, ref_loss = reference(inputs, targets)
    logits, loss = parallel(inputs, targets)
    ref_loss.backward()
    loss.backward()
    return Twins(reference, parallel, inputs, targets, ref_logits, ref_loss, logits, loss)


def steps_with_hook_all_reduces(
    engine, hook, steps: int, seq_len: int, seed: int, deviation: Callable[[], float]
) -> dict:
    """`steps` engine steps on batches of 2 random sequences (tokens below 64, generator seeded with
    `seed`), recording the ranks of every all-reduce issued inside the hook's post-step function
    (the world's ranks for the default group) and `deviation()` after each step. It applies
    hook.normalize_now() itself, before the first step (uncounted, as the trainer's call)."""
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
    gen = torch.Generator().manual_seed(seed)
    deviations, calls_per_step = [], []
    for _ in range(steps):
        tokens = torch.randint(0, 64, (2, seq_len + 1), generator=gen)
        before = len(calls)
        _, loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()
        calls_per_step.append(calls[before:])
        deviations.append(deviation())
    return {"calls_per_step": calls_per_step, "deviations": deviations}
