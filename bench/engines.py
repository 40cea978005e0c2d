"""Bare DeepSpeed engines, built as the trainer builds them, for the scripts that time engine steps.

bench/mfu.py, bench/profile_step.py and bench/renorm_cost.py (from a preset or YAML and a DeepSpeed
JSON: preset_engine), bench/step_time.py and bench/gpu_check_worker.py (at a model shape and
micro-batch: shape_engine) run steps on random tokens: no data, no run folder, no checkpoints.
They share this construction so that they measure the engine (model seed, optimizer, schedule,
ZeRO settings, precision) that `ngpt_ds train` would run: on a CPU without native bf16 matmuls a
bf16 JSON times fp32 steps, as the trainer trains there (`load_bench_ds`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

    from ngpt_ds.distributed import DistEnv
    from ngpt_ds.model import ModelConfig
    from ngpt_ds.train.config import TrainConfig
    from ngpt_ds.train.ds_config import BatchPlan
    from ngpt_ds.train.hypersphere import HypersphereHook

T = TypeVar("T")

#: the vocabulary of a preset that leaves model.vocab_size to the tokenizer (there is none here)
DEFAULT_VOCAB = 4096


@dataclass
class BenchEngine:
    """The engine and what a script reads next to it."""

    engine: DeepSpeedEngine
    model: ModelConfig
    ds: dict[str, Any]
    """the DeepSpeed JSON as checked (train_batch_size filled in)"""
    plan: BatchPlan
    hook: HypersphereHook | None
    """the hypersphere hook, its matrices already on the sphere; None without one"""


def _start(
    source: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    ds: dict[str, Any],
    ds_path: str,
    plan: BatchPlan,
    sphere_hook: bool | None,
) -> BenchEngine:
    """start_engine of a run without data or a run folder; the hook as BenchEngine.hook says."""
    from ngpt_ds.train.builder import start_engine
    from ngpt_ds.train.config import RunConfig
    from ngpt_ds.train.hypersphere import HypersphereHook

    run = RunConfig(
        config_source=source,
        model=model_cfg,
        train=train_cfg,
        deepspeed=ds,
        deepspeed_source=ds_path,
        data_dir="",
        out_dir="",
    )
    engine = start_engine(run)
    hook = None
    if sphere_hook or (sphere_hook is None and model_cfg.is_ngpt):
        hook = HypersphereHook(engine)
        hook.normalize_now()
    return BenchEngine(engine=engine, model=model_cfg, ds=ds, plan=plan, hook=hook)


def load_bench_ds(ds_path: str, *, native: bool | None = None) -> dict[str, Any]:
    """The DeepSpeed JSON at `ds_path` in the precision the trainer would train it in. On a CPU without
    native bf16 matmuls (`native`: None asks the CPU) a JSON that enables bf16 becomes fp32, with one warning,
    unless NGPT_DS_CPU_BF16=1, as in the trainer: torch runs bf16 matmuls there in a reference kernel some 35x
    slower, so every step time and ratio measured that kernel, not the model (bench/step_time.py on an AVX2
    CPU: 11.8 s a tiny step in bf16 against 1.1 s in fp32, and nGPT/GPT 0.98 against 1.04)."""
    from ngpt_ds.cli import default_accelerator

    default_accelerator()  # before deepspeed is imported
    from deepspeed.accelerator import get_accelerator

    from ngpt_ds.train.ds_config import fall_back_from_slow_cpu_bf16, load_ds_config

    ds = load_ds_config(ds_path)
    on_cpu = get_accelerator().device_name() == "cpu"
    fell_back = on_cpu and fall_back_from_slow_cpu_bf16(ds, ds_path, native=native)
    if fell_back and ds_path not in _WARNED and os.environ.get("RANK", "0") == "0":
        _WARNED.add(ds_path)  # a script builds an engine per model, and a job starts several ranks: one warning
        print(
            f"warning: {ds_path} enables bf16, but this CPU has no native bf16 matmul (AVX512 or AMX): timing fp32 "
            "steps, as the trainer trains on it; NGPT_DS_CPU_BF16=1 times bf16",
            file=sys.stderr,
        )
    return ds


_WARNED: set[str] = set()


def refuse_gpu(script: str, why: str) -> bool:
    """True, after an error line, where DeepSpeed would put this script's engines on a GPU (CUDA present and
    DS_ACCELERATOR not cpu): the script measures on the CPU only (`why`), and on a GPU machine it mixed a GPU
    side with a CPU side. DS_ACCELERATOR=cpu runs it on this machine's CPU."""
    import torch

    accelerator = os.environ.get("DS_ACCELERATOR") or ("cuda" if torch.cuda.is_available() else "cpu")
    if accelerator == "cpu":
        return False
    print(
        f"error: {script} measures on the CPU only ({why}), and DeepSpeed would put its engines on "
        f"{accelerator} here. Run it as DS_ACCELERATOR=cpu python {script} ... to measure this machine's CPU",
        file=sys.stderr,
    )
    return True


def _check(ds: dict[str, Any], ds_path: str, world_size: int) -> BatchPlan:
    from ngpt_ds.train.ds_config import check_ds_config

    return check_ds_config(
        ds, world_size=world_size, tensor_parallel=1, source=ds_path, fp16_supported=False, bf16_supported=True
    )


def preset_engine(config: str, ds_path: str, env: DistEnv, sphere_hook: bool | None = None) -> BenchEngine:
    """Check the configs, start the process group of `env`, build the engine.

    sphere_hook: attach and apply the hypersphere hook; None: for nGPT only, as the trainer does.
    The caller destroys the process group and ends through ngpt_ds.distributed.exit_process.
    """
    from ngpt_ds.cli import default_accelerator

    default_accelerator()  # before deepspeed is imported
    from ngpt_ds.train.builder import init_process_group
    from ngpt_ds.train.config import load_model_and_train

    # The scripts time eager steps, and compile themselves where they offer --compile.
    model_cfg, train_cfg, _ = load_model_and_train(config, train_overrides={"compile": False})
    model_cfg.vocab_size = model_cfg.vocab_size or DEFAULT_VOCAB
    ds = load_bench_ds(ds_path)
    plan = _check(ds, ds_path, env.world_size)
    init_process_group(env, timeout_s=300)
    return _start(config, model_cfg, train_cfg, ds, ds_path, plan, sphere_hook)


def shape_engine(arch: str, shape: dict[str, int], batch: int, ds_path: str, source: str = "bench") -> BenchEngine:
    """One rank's engine of `arch` at `shape` (ModelConfig fields) and micro-batch `batch`, lr 1e-3 and
    the architecture's training defaults; precision and ZeRO stage from the DeepSpeed JSON, whose
    batch sizes are replaced. Needs a process group (init_process_group)."""
    from ngpt_ds.cli import default_accelerator

    default_accelerator()  # before deepspeed is imported
    from ngpt_ds.model import ModelConfig
    from ngpt_ds.train.config import TrainConfig

    ds = load_bench_ds(ds_path)
    ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"] = batch, 1
    ds.pop("train_batch_size", None)
    plan = _check(ds, ds_path, 1)
    model_cfg = ModelConfig(arch=arch, **shape).validate()
    return _start(source, model_cfg, TrainConfig(lr=1e-3).resolve(arch), ds, ds_path, plan, None)


if __name__ == "__main__":
    from report import module_main

    sys.exit(module_main(__doc__))


def with_flash_attention(step: Callable[..., T]) -> Callable[..., T]:
    """`step`, run with compiled attention on SDPA's flash kernel at every context (WRITTEN_ATTENTION_MAX_POSITIONS
    0 while it runs): the compiled steps as they were before `written_attention`, for an A/B in one process.

    Dynamo guards its graphs on the constant, so a module compiled under each value keeps both graphs and
    switching between calls recompiles nothing."""
    from ngpt_ds.model import blocks

    def run(*args: Any, **kwargs: Any) -> T:
        saved = blocks.WRITTEN_ATTENTION_MAX_POSITIONS
        blocks.WRITTEN_ATTENTION_MAX_POSITIONS = 0
        try:
            return step(*args, **kwargs)
        finally:
            blocks.WRITTEN_ATTENTION_MAX_POSITIONS = saved

    return run
