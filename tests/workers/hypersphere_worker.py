"""Worker for tests/test_hypersphere.py: run under torchrun with 2 ranks on gloo.

For every (ZeRO stage, precision) it builds a small nGPT whose matrix rows straddle
ZeRO partition boundaries, takes several optimizer steps with the renormalization
hook, and after init and each step records, from DeepSpeed's own public accessors
(not the hook's bookkeeping): the largest deviation of any declared norm from 1 on
the gathered fp32 master, whether the working copy equals cast(master) exactly on
every rank, whether ranks agree bit for bit, and whether the scalars were left alone.
Rank 0 writes one JSON file of results.
"""

import os
import sys

import torch
import torch.distributed as dist

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from common import ds_config, run_worker, start_test_engine  # noqa: E402


def gather_master(engine, param):
    """Full fp32 master of a parameter through DeepSpeed's API (or the optimizer's fp32 copy at stage 0)."""
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer
    from deepspeed.utils import safe_get_full_fp32_param

    if hasattr(param, "ds_id") or hasattr(param, "_hp_mapping"):
        return safe_get_full_fp32_param(param).detach().clone()
    opt = engine.optimizer
    if isinstance(opt, FP16_UnfusedOptimizer):
        for lp_group, hp_group in zip(opt.fp16_groups, opt.fp32_groups):
            for lp, hp in zip(lp_group, hp_group):
                if lp is param:
                    return hp.detach().clone()
    return param.detach().float().clone()


def set_master(engine, param, value):
    """Overwrite a parameter's full fp32 master (every rank passes the same full value)."""
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer
    from deepspeed.utils import safe_set_full_fp32_param

    if hasattr(param, "ds_id") or hasattr(param, "_hp_mapping"):
        safe_set_full_fp32_param(param, value)
        return
    opt = engine.optimizer
    if isinstance(opt, FP16_UnfusedOptimizer):
        for lp_group, hp_group in zip(opt.fp16_groups, opt.fp32_groups):
            for lp, hp in zip(lp_group, hp_group):
                if lp is param:
                    hp.data.copy_(value)
        return
    param.data.copy_(value)


def straddling_rows(matrices):
    """(matrix index, row) of each row-normalized matrix row that a ZeRO 1/2 cut splits, on any rank."""
    mine = []
    for i, m in enumerate(matrices):
        mapping = getattr(m.param, "_hp_mapping", None)
        if mapping is not None and m.norm_dim == 1 and mapping.lp_fragment_address.start % m.param.shape[1]:
            mine.append((i, mapping.lp_fragment_address.start // m.param.shape[1]))
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return sorted({tuple(v) for rank in everyone for v in rank})


def sphere_guards(engine, hook):
    """A zero norm vector must stay zero through renormalization (not become NaN), and a NaN in a
    master must be reported by max_deviation (not read as 0.0)."""
    from ngpt_ds.model import sphere_matrices

    matrices = sphere_matrices(engine.module)
    straddling = straddling_rows(matrices)
    zeroed = straddling + [(i, 0) for i in range(len(matrices))]  # and vector 0 of every matrix
    for i, m in enumerate(matrices):  # and the vector holding the middle element: cut at ZeRO 3
        rows, cols = getattr(m.param, "ds_shape", m.param.shape)
        zeroed.append((i, (rows * cols // 2) // cols if m.norm_dim == 1 else (rows * cols // 2) % cols))
    zeroed = sorted(set(zeroed))
    for i, v in zeroed:
        m = matrices[i]
        value = gather_master(engine, m.param)
        value.select(1 - m.norm_dim, v).zero_()
        set_master(engine, m.param, value)
    hook.normalize_now()
    zero_rows_stay_zero, others_unit, finite = True, 0.0, True
    for i, m in enumerate(matrices):
        master = gather_master(engine, m.param)
        finite &= bool(master.isfinite().all())
        norms = master.norm(dim=m.norm_dim)
        mask = torch.ones_like(norms, dtype=torch.bool)
        for j, v in zeroed:
            if j == i:
                zero_rows_stay_zero &= bool((master.select(1 - m.norm_dim, v) == 0).all())
                mask[v] = False
        others_unit = max(others_unit, (norms[mask] - 1).abs().max().item())
    deviation_with_zero_rows = hook.max_deviation()  # a zero vector has norm 0: deviation 1
    m = matrices[-1]
    value = gather_master(engine, m.param)
    value[0, 0] = float("nan")
    set_master(engine, m.param, value)
    nan_deviation = hook.max_deviation()
    return {
        "zeroed": len(zeroed),
        "straddling_zeroed": len(straddling),
        "zero_rows_stay_zero": zero_rows_stay_zero,
        "others_unit": others_unit,
        "finite": finite,
        "deviation_with_zero_rows": deviation_with_zero_rows,
        "nan_deviation": repr(nan_deviation),
    }


def gather_working(param):
    import deepspeed

    if hasattr(param, "ds_id"):
        with deepspeed.zero.GatheredParameters([param]):
            return param.detach().clone()
    return param.detach().clone()


def same_on_all_ranks(t: torch.Tensor) -> bool:
    gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, t.contiguous())
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


def check(engine, hook):
    from ngpt_ds.model import sphere_matrices

    deviation, working_equals_master, ranks_agree = 0.0, True, True
    for m in sphere_matrices(engine.module):
        master = gather_master(engine, m.param)
        working = gather_working(m.param)
        deviation = max(deviation, (master.norm(dim=m.norm_dim) - 1).abs().max().item())
        working_equals_master &= torch.equal(working, master.to(working.dtype))
        ranks_agree &= same_on_all_ranks(working.float()) and same_on_all_ranks(master)
    return {
        "max_deviation": deviation,
        "working_equals_master": bool(working_equals_master),
        "ranks_agree": bool(ranks_agree),
        "hook_max_deviation": hook.max_deviation(),
    }


def straddles(hook):
    """Count this rank's pieces that start or end inside a norm vector of the flattened matrix."""
    rows = cols = 0
    for unit in hook.units:
        for piece in unit.pieces:
            end = piece.start + piece.values.numel()
            whole = piece.start == 0 and end == piece.rows * piece.cols
            if piece.norm_dim == 1 and (piece.start % piece.cols or end % piece.cols):
                rows += 1
            if piece.norm_dim == 0 and not whole:
                cols += 1
    return rows, cols


def run_case(stage, precision, mlp_hidden, steps):
    from ngpt_ds.model import ModelConfig
    from ngpt_ds.train.config import TrainConfig
    from ngpt_ds.train.hypersphere import HypersphereHook

    # Odd layers, odd MLP width and an odd vocabulary: ZeRO cuts fall inside norm vectors. With 2
    # ranks, ZeRO 1/2 cut the flat group once: mlp_hidden 37 puts the cut inside a row of a
    # row-normalized matrix, 31 inside a row of W_o (normalized along columns).
    model = ModelConfig(arch="ngpt", vocab_size=53, n_layer=3, n_embd=24, n_head=2, seq_len=16, mlp_hidden=mlp_hidden)
    train = TrainConfig(max_steps=steps, lr=2e-2).resolve("ngpt")
    ds = ds_config(stage, bf16=precision == "bf16")
    if stage == 3:
        ds["zero_optimization"]["stage3_param_persistence_threshold"] = 100  # most params partitioned
    engine = start_test_engine(model, train, ds)
    hook = HypersphereHook(engine)
    scalar_names = [n for n, _ in engine.module.named_parameters() if n.endswith(".param")]
    scalars_before = {n: gather_master(engine, engine.module.get_parameter(n)) for n in scalar_names}
    hook.normalize_now()
    scalars_untouched = all(
        torch.equal(gather_master(engine, engine.module.get_parameter(n)), v) for n, v in scalars_before.items()
    )
    record = {
        "stage": stage,
        "precision": precision,
        "mlp_hidden": mlp_hidden,
        "scalars_untouched_by_hook": scalars_untouched,
        "after_init": check(engine, hook),
        "steps": [],
        "all_reduces_per_step": [],
        "optimizer": type(engine.optimizer).__name__,
    }
    rows, cols = straddles(hook)
    totals = torch.tensor([rows, cols])
    dist.all_reduce(totals)
    record["straddling_rows"], record["straddling_cols"] = totals.tolist()

    generator = torch.Generator().manual_seed(100 + dist.get_rank())
    losses = []
    for _ in range(steps):
        tokens = torch.randint(0, 53, (2, 17), generator=generator)
        before = hook.all_reduces
        _, loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()
        record["all_reduces_per_step"].append(hook.all_reduces - before)
        losses.append(loss.item())
        record["steps"].append(check(engine, hook))
    record["losses"] = losses
    record["guards"] = sphere_guards(engine, hook)
    hook.remove()
    return record


def main():
    out_path = sys.argv[1]
    cases = [c.split(":") for c in sys.argv[2].split(",")]  # stage:precision:mlp_hidden
    steps = int(sys.argv[3])
    run_worker(
        out_path,
        lambda: [run_case(int(stage), precision, int(mlp_hidden), steps) for stage, precision, mlp_hidden in cases],
    )


if __name__ == "__main__":
    main()
