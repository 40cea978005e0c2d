"""A bare DeepSpeed engine from a preset (or YAML) and a DeepSpeed JSON, built as the trainer builds it.

bench/mfu.py, bench/profile_step.py and bench/renorm_cost.py time engine steps on random tokens:
no data, no run folder, no checkpoints. They share this one construction so that they measure the
same engine (model seed, optimizer, schedule, ZeRO settings) that `ngpt_ds train` would run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

    from ngpt_ds.distributed import DistEnv
    from ngpt_ds.model import ModelConfig
    from ngpt_ds.train.ds_config import BatchPlan
    from ngpt_ds.train.hypersphere import HypersphereHook

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


def preset_engine(config: str, ds_path: str, env: DistEnv, sphere_hook: bool | None = None) -> BenchEngine:
    """Check the configs, start the process group of `env`, build the engine.

    sphere_hook: attach and apply the hypersphere hook; None: for nGPT only, as the trainer does.
    The caller destroys the process group and ends through ngpt_ds.distributed.exit_process.
    """
    from ngpt_ds.cli import default_accelerator

    default_accelerator()  # before deepspeed is imported
    from ngpt_ds.train.builder import init_process_group, start_engine
    from ngpt_ds.train.config import RunConfig, load_model_and_train
    from ngpt_ds.train.ds_config import check_ds_config, load_ds_config
    from ngpt_ds.train.hypersphere import HypersphereHook

    model_cfg, train_cfg, _ = load_model_and_train(config)
    model_cfg.vocab_size = model_cfg.vocab_size or DEFAULT_VOCAB
    ds = load_ds_config(ds_path)
    plan = check_ds_config(
        ds, world_size=env.world_size, tensor_parallel=1, source=ds_path, fp16_supported=False, bf16_supported=True
    )
    init_process_group(env, timeout_s=300)
    run = RunConfig(
        config_source=config,
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
