"""Worker for tests/test_sphere_guards.py: 2 ranks under torchrun, gloo, real trainers.

usage: sphere_guard_worker.py OUT.json DATA_DIR WORK_DIR PART[,PART...]

Parts (each writes one entry of the result; an exception is recorded as its text, so one
broken part does not hide the others):
  refusing  the hook's norm-sum reduction against a group bound only to a non-CPU device type
            (NCCL's rule: CUDA only), with the communication device set to that type
  offload   trainer runs at ZeRO-2-offload and ZeRO-3-offload recording every tensor that
            project code passes to torch.distributed, with its device and the calling file
  resume    bf16 ZeRO-2 run, then a resume with zero_optimization.load_from_fp32_weights
            false: the gathered fp32 masters right after the load, before any step
  nan       a NaN master row of a token no batch contains (the loss stays finite): the trainer
            must stop, naming the step and the matrix
  overflow  the same with a row of 1e20s, whose squared norm overflows: the matrix is named too
  not_run   the renormalization hook detached from the optimizer: the trainer must fail
  tp        tensor parallel 2: one rank's shards off the sphere; max_deviation on every rank
"""

import json
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from common import run_worker  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PROJECT = str(REPO / "ngpt_ds")
MODEL = {"arch": "ngpt", "n_layer": 2, "n_embd": 32, "n_head": 2, "seq_len": 32}


def write_configs(work: Path, name: str, ds: dict, train: dict) -> tuple[Path, Path]:
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    yaml_path, ds_path = work / f"{name}.yaml", work / f"{name}.json"
    if dist.get_rank() == 0:
        yaml_path.write_text(
            yaml.safe_dump(
                {
                    "model": MODEL,
                    "train": {
                        "max_steps": 3,
                        "lr": 1e-2,
                        "log_interval": 1,
                        "eval_interval": 2,
                        "eval_batches": 2,
                        "checkpoint_interval": 0,
                        "peak_tflops": 1.0,
                        "dist_timeout_s": 120,
                        **train,
                    },
                }
            )
        )
        ds_path.write_text(
            json.dumps(
                {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0, **ds}
            )
        )
    dist.barrier()
    return yaml_path, ds_path


def make_trainer(data: str, work: Path, name: str, ds: dict, train: dict | None = None):
    from ngpt_ds.train.builder import TrainOptions, prepare
    from ngpt_ds.train.loop import Trainer

    yaml_path, ds_path = write_configs(work, name, ds, train or {})
    options = TrainOptions(
        deepspeed_config=str(ds_path), config=str(yaml_path), data=data, out=str(work / name), progress=False
    )
    return Trainer(prepare(options), options)


def gathered_deviation(engine) -> float:
    """max | ||w|| - 1 | over the full fp32 masters, through DeepSpeed's own accessor."""
    from deepspeed.utils import safe_get_full_fp32_param

    from ngpt_ds.model import sphere_matrices

    worst = 0.0
    for m in sphere_matrices(engine.module):
        master = safe_get_full_fp32_param(m.param)
        worst = max(worst, (master.norm(dim=m.norm_dim) - 1).abs().max().item())
    return worst


# ---- parts ----------------------------------------------------------------------------------


def part_refusing(data, work):
    """The hook's reduction (StepUnit.norm_sums) of a CPU master against a group whose backend is
    bound only to the meta device type: the one non-CPU device type a CPU build of torch has.
    Such a group refuses CPU tensors exactly as NCCL does."""
    from ngpt_ds.train.sphere_pieces import MasterPiece, StepUnit

    refusing = dist.new_group(backend="meta:gloo")
    cpu_only = dist.new_group(backend="cpu:gloo")
    rank = dist.get_rank()
    w = torch.arange(1.0, 13.0).view(3, 4) + rank  # this rank's fp32 master, on the CPU as under offload

    def unit(group):
        piece = MasterPiece(values=w.view(-1), start=0, rows=3, cols=4, norm_dim=1, slot=0)
        return StepUnit({id(w)}, 3, [piece], group, torch.device("cpu"))

    seen = []
    real = dist.all_reduce

    def recording(tensor, *args, **kwargs):
        seen.append(str(tensor.device))
        return real(tensor, *args, **kwargs)

    out = {}
    dist.all_reduce = recording
    try:
        # Communication device = the master's device: the group must refuse it (NCCL's rule).
        on_master = unit(refusing)
        on_master.comm_device = torch.device("cpu")
        try:
            on_master.norm_sums()
            out["master_device_error"] = None
        except RuntimeError as err:
            out["master_device_error"] = str(err).splitlines()[0]
        # Communication device = the device the group is bound to. A meta tensor carries no data,
        # so the result cannot come back: the copy out of meta is the only error allowed.
        seen.clear()
        on_comm = unit(refusing)
        on_comm.comm_device = torch.device("meta")
        try:
            on_comm.norm_sums()
            out["comm_device_error"] = None
        except (RuntimeError, NotImplementedError) as err:
            out["comm_device_error"] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
        out["comm_device_devices"] = list(seen)
        # A group bound to the CPU with the communication device cpu: the values.
        seen.clear()
        on_cpu = unit(cpu_only)
        on_cpu.comm_device = torch.device("cpu")
        sums = on_cpu.norm_sums()
        expected = sum(
            (torch.arange(1.0, 13.0, dtype=torch.float64).view(3, 4) + r).square().sum(dim=1) for r in range(2)
        )
        out["cpu_sums_relative_error"] = ((sums.double() - expected) / expected).abs().max().item()
        out["cpu_devices"] = list(seen)
    finally:
        dist.all_reduce = real
    return out


COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "broadcast",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "all_to_all_single",
    "all_to_all",
    "gather",
    "scatter",
    "send",
    "recv",
)


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def part_offload(data, work):
    """Record (caller file, function, tensor devices) for every torch.distributed collective that
    project code calls during ZeRO-2-offload and ZeRO-3-offload trainer runs (3 steps, a log line
    every step, evaluations at steps 2 and 3)."""
    configs = {
        "zero2_offload": {
            "bf16": {"enabled": True},
            "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
            "zero_force_ds_cpu_optimizer": False,
        },
        "zero3_offload": {
            "bf16": {"enabled": True},
            "zero_optimization": {
                "stage": 3,
                "offload_optimizer": {"device": "cpu"},
                "offload_param": {"device": "cpu"},
                "stage3_param_persistence_threshold": 0,
            },
            "zero_force_ds_cpu_optimizer": False,
        },
    }
    out = {}
    for name, ds in configs.items():
        calls = []
        originals = {fn: getattr(dist, fn) for fn in COLLECTIVES if hasattr(dist, fn)}

        def wrap(fn, real, calls=calls):
            def recorded(*args, **kwargs):
                caller = sys._getframe(1).f_code.co_filename
                if caller.startswith(PROJECT):
                    tensors = list(_tensors(list(args) + list(kwargs.values())))
                    calls.append(
                        {
                            "caller": os.path.relpath(caller, REPO),
                            "fn": fn,
                            "devices": sorted({str(t.device) for t in tensors}),
                        }
                    )
                return real(*args, **kwargs)

            return recorded

        for fn, real in originals.items():
            setattr(dist, fn, wrap(fn, real))
        try:
            trainer = make_trainer(data, work, name, ds)  # the hook's normalize_now before step 0 included
            summary = trainer.fit()
        finally:
            for fn, real in originals.items():
                setattr(dist, fn, real)
        masters = {str(unit.device) for unit in trainer.hook.units}
        out[name] = {
            "engine_device": str(trainer.engine.device),
            "master_devices": sorted(masters),
            "comm_devices": sorted({str(getattr(u, "comm_device", None)) for u in trainer.hook.units}),
            "optimizer": type(trainer.engine.optimizer).__name__,
            "steps": summary.step,
            "calls": calls,
        }
    return out


def part_resume(data, work):
    ds = {"bf16": {"enabled": True}, "zero_optimization": {"stage": 2, "load_from_fp32_weights": False}}
    first = make_trainer(data, work, "resume", ds, {"max_steps": 2, "checkpoint_interval": 2})
    first.fit()
    after_training = gathered_deviation(first.engine)
    second = make_trainer(data, work, "resume", ds, {"max_steps": 4, "checkpoint_interval": 2})
    return {
        "resumed_at": second.step,
        "deviation_before_save": after_training,
        "deviation_after_load": gathered_deviation(second.engine),
    }


def _avoiding(loader, token):
    """Wrap loader.next_batch so that no batch contains `token` (replaced by token 0)."""
    real = loader.next_batch

    def next_batch():
        inputs, targets = real()
        return inputs.masked_fill(inputs == token, 0), targets.masked_fill(targets == token, 0)

    loader.next_batch = next_batch


def part_nan(data, work):
    """At ZeRO 2, make the fp32 master of one input-embedding row NaN after step 2, for a token no
    batch contains: its gradient is zero, so the loss stays finite and the row stays NaN."""
    return _poisoned_row(data, work, "nan", float("nan"))


def part_overflow(data, work):
    """As part_nan, with the row's values 1e20 instead: finite, but their squares overflow fp32, so the
    renormalization sees an infinite squared norm and leaves the row at zeros (off the sphere by 1)."""
    return _poisoned_row(data, work, "overflow", 1e20)


def _poisoned_row(data, work, name, value):
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    from ngpt_ds.train.divergence import TrainingDiverged

    trainer = make_trainer(
        data,
        work,
        name,
        {"bf16": {"enabled": False}, "zero_optimization": {"stage": 2}},
        {"max_steps": 6, "log_interval": 5, "eval_interval": 0},
    )
    token = 7
    _avoiding(trainer.loader, token)
    real_step = trainer.train_step
    embed = trainer.model.embed.weight

    def train_step():
        if trainer.step == 2:
            master = safe_get_full_fp32_param(embed).clone()
            master[token] = value
            safe_set_full_fp32_param(embed, master)
        return real_step()

    trainer.train_step = train_step
    try:
        summary = trainer.fit()
        return {"raised": None, "finished_at": summary.step}
    except TrainingDiverged as err:
        return {"raised": str(err), "step": trainer.step}


def part_not_run(data, work):
    """The hook detached after the first step (as if DeepSpeed stepped a copy of the masters that
    the hook does not know): the trainer must fail at step 2 instead of training off the sphere."""
    trainer = make_trainer(
        data,
        work,
        "not_run",
        {"bf16": {"enabled": False}, "zero_optimization": {"stage": 1}},
        {"max_steps": 4, "eval_interval": 0},
    )
    real_step = trainer.train_step

    def train_step():
        if trainer.step == 1:
            trainer.hook.remove()
        return real_step()

    trainer.train_step = train_step
    try:
        summary = trainer.fit()
        return {"raised": None, "finished_at": summary.step, "deviation_at_end": gathered_deviation(trainer.engine)}
    except RuntimeError as err:
        return {"raised": f"{type(err).__name__}: {err}", "step": trainer.step}


def part_tp(data, work):
    """Tensor parallel 2 (data parallel 1), ZeRO 0, fp32: tensor rank 1 scales its shard of
    every sphere matrix by 2 (every norm vector of it then has norm 2). The deviation
    the hook reports must be 1.0 on every rank, not only where the broken shard is."""
    from ngpt_ds.model import sphere_matrices

    trainer = make_trainer(
        data, work, "tp", {"bf16": {"enabled": False}, "zero_optimization": {"stage": 0}}, {"tensor_parallel_size": 2}
    )
    before = trainer.hook.max_deviation()
    if trainer.groups.tp_rank == 1:
        with torch.no_grad():
            for m in sphere_matrices(trainer.model):
                m.param.mul_(2.0)
    after = trainer.hook.max_deviation()
    return {"tp_rank": trainer.groups.tp_rank, "before": before, "after": after}


def part_health(data, work):
    """ZeRO 0 with bf16 (FP16_UnfusedOptimizer): the parameter is the bf16 working copy and its fp32 master
    lives in the optimizer's fp32_groups. The logged s_qk mean must be the master's, not the bf16 copy's."""
    from ngpt_ds.train.metrics import ngpt_health

    trainer = make_trainer(data, work, "health", {"bf16": {"enabled": True}, "zero_optimization": {"stage": 0}})
    trainer.fit()
    opt = trainer.engine.optimizer
    masters = {id(lp): hp for lps, hps in zip(opt.fp16_groups, opt.fp32_groups) for lp, hp in zip(lps, hps)}
    s_qk = trainer.model.blocks[0].attn.s_qk

    def mean(value):
        value = value.float() * (s_qk.init / s_qk.scale)
        return (value.abs() if s_qk.absolute else value).mean().item()

    return {
        "optimizer": type(opt).__name__,
        "logged": ngpt_health(trainer.model, trainer.hook)["ngpt/s_qk/layer_00"],
        "from_master": mean(masters[id(s_qk.param)]),
        "from_working_copy": mean(s_qk.param.detach()),
    }


PARTS = {
    "health": part_health,
    "refusing": part_refusing,
    "offload": part_offload,
    "resume": part_resume,
    "nan": part_nan,
    "overflow": part_overflow,
    "not_run": part_not_run,
    "tp": part_tp,
}


def main():
    out_path, data, work, parts = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4].split(",")

    def run_parts():
        results = {}
        for part in parts:
            try:
                mine = PARTS[part](data, work)
            except Exception:  # noqa: BLE001 - recorded for the test to show
                mine = {"error": traceback.format_exc()[-3000:]}
            everyone = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, mine)
            results[part] = everyone
        return results

    run_worker(out_path, run_parts, timeout_s=120)


if __name__ == "__main__":
    main()
