"""Everything before the first step: options -> validated run config -> process group -> engine.

Every check that can fail on user input runs before the process group exists, so a
bad config stops every rank at once with the same message instead of a hang. One part runs
just after it starts: choosing the checkpoint to resume (`choose_resume`), whose digests the
ranks share out and agree on (ngpt_ds.train.resume.resolve_resume_on_all_ranks).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from ngpt_ds import distributed, hostmem, log, rendezvous_failures
from ngpt_ds.data.default_corpus import ensure_default_dataset
from ngpt_ds.data.loader import TokenWindowLoader, validation_batches
from ngpt_ds.data.shards import DatasetMeta, check_tokenizer_agrees, check_vocab_matches, load_dataset_meta
from ngpt_ds.data.tokenizer import VocabSizeError
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model import build_model
from ngpt_ds.parallel import ParallelGroups, check_tensor_parallel, parallelize
from ngpt_ds.parallel.pipeline import build_pipeline, check_pipeline
from ngpt_ds.parallel.sequence import (
    SequenceParallelGroups,
    check_sequence_parallel,
    deepspeed_config_for,
    parallelize_sequence,
)
from ngpt_ds.train import ds_compat, memory_plan, preflight, reshape_plan
from ngpt_ds.train.config import RunConfig, load_model_and_train
from ngpt_ds.train.config_identity import check_default_folder_is_this_configs, config_file_sha256
from ngpt_ds.train.device_check import check_devices_on_all_ranks, device_problem
from ngpt_ds.train.ds_config import (
    BatchPlan,
    check_ds_config,
    fall_back_from_slow_cpu_bf16,
    load_ds_config,
    precision_of,
    zero_stage_of,
)
from ngpt_ds.train.optim import build_optimizer, build_schedule
from ngpt_ds.train.resume import resolve_resume, resolve_resume_on_all_ranks

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

_log = log.get(__name__)


@dataclass(kw_only=True)
class TrainOptions:
    """What the command line chose (launch/train.py --help explains each)."""

    deepspeed_config: str = "ds_configs/zero2.json"
    config: str | None = None
    model: str | None = None
    data: str | None = None
    max_steps: int | None = None
    compile_model: bool | None = None
    """--compile / --no-compile: overrides train.compile (None: the YAML's)."""
    out: str | None = None
    resume: str = "auto"
    max_time_s: float | None = None
    progress: bool = True
    train_overrides: dict | None = None
    world_size: int | None = None
    """Plan for this many ranks instead of the launched ones (the dry run, ngpt_ds.train.dry_run)."""


@dataclass
class Prepared:
    """A validated run, before any process group: what `start_engine` needs."""

    run: RunConfig
    plan: BatchPlan
    dist_env: distributed.DistEnv
    data: DatasetMeta
    """The dataset's meta.json (vocabulary, tokenizer hash): what a checkpoint to resume must fit."""
    resume_from: Path | None = None
    """The verified checkpoint to load (set by `choose_resume`)."""
    reshape: reshape_plan.Reshape | None = None
    """Set when resume_from was saved at another data-parallel size: load its universal conversion."""


def prepare(options: TrainOptions, *, resume: bool = True) -> Prepared:
    """Resolve and validate configs, data and (with `resume`) the resume point, each rank on its own.
    Raises NgptConfigError on bad input. The trainer passes resume=False and calls `choose_resume`
    once the process group has started, to verify the checkpoint once in all instead of once per rank."""
    dist_env = distributed.discover()
    if options.world_size is not None:
        dist_env = dataclasses.replace(dist_env, world_size=options.world_size)
    ds_compat.check_deepspeed_version()  # before any DeepSpeed internals are touched
    overrides = dict(options.train_overrides or {})
    if options.max_steps is not None:
        overrides["max_steps"] = options.max_steps
    if options.compile_model is not None:
        overrides["compile"] = options.compile_model
    model_cfg, train_cfg, config_path = load_model_and_train(
        config_name(options.config, options.model), options.model, overrides
    )

    ds_config = load_ds_config(options.deepspeed_config)
    check_sequence_parallel(
        train_cfg.sequence_parallel_size,
        dist_env.world_size,
        n_head=model_cfg.n_head,
        seq_len=model_cfg.seq_len,
        tensor_parallel=train_cfg.tensor_parallel_size,
        pipeline_parallel=train_cfg.pipeline_parallel_size,
    )
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    # A dry run for RANKS plans for the machines that will train (GPUs, say, planned from a login node): this
    # CPU's precision (the bf16 -> fp32 fallback, no fp16) is not theirs. It switched the plan to fp32 (26 GiB
    # a rank instead of 14 for ngpt_0.5b at ZeRO 2), passed a pipeline at ZeRO 0 in bf16 that the job refuses,
    # and refused fp16, which GPU ranks train in. Such a run gets a note about this machine instead.
    elsewhere = options.world_size is not None
    on_cpu = accelerator.device_name() == "cpu"
    fp16_supported = bool(accelerator.is_fp16_supported())
    if on_cpu and not elsewhere:
        slower = fall_back_from_slow_cpu_bf16(ds_config, options.deepspeed_config)
        if slower and dist_env.rank == 0:
            _log.warning(f"warning: {slower}")
    elif on_cpu and dist_env.rank == 0:
        here = _here_note(ds_config, options.deepspeed_config, fp16_supported=fp16_supported)
        if here:
            _log.warning(f"note: {here}")
    check_pipeline(
        train_cfg.pipeline_parallel_size,
        world_size=dist_env.world_size,
        zero_stage=zero_stage_of(ds_config),
        n_layer=model_cfg.n_layer,
        deepspeed_source=options.deepspeed_config,
        tensor_parallel=train_cfg.tensor_parallel_size,
        sequence_parallel=train_cfg.sequence_parallel_size,
        precision=precision_of(ds_config),
    )
    plan = check_ds_config(
        ds_config,
        world_size=dist_env.world_size,
        tensor_parallel=train_cfg.tensor_parallel_size,
        pipeline_parallel=train_cfg.pipeline_parallel_size,
        sequence_parallel=train_cfg.sequence_parallel_size,
        source=options.deepspeed_config,
        fp16_supported=fp16_supported or elsewhere,
        bf16_supported=bool(accelerator.is_bf16_supported()),
    )
    if options.world_size is None:  # a dry run plans for other machines, whose toolchain this one cannot see
        preflight.check_compile_toolchain(train_cfg.compile, on_cpu=accelerator.device_name() == "cpu")
    ds_config.setdefault("steps_per_print", 10**9)  # ngpt_ds logs; keep DeepSpeed's own step log quiet
    note = deepspeed_config_for(ds_config, train_cfg.sequence_parallel_size)  # ZeRO 3: reduce_scatter false
    if note and dist_env.rank == 0:
        _log.info(note)
    if train_cfg.compile and zero_stage_of(ds_config) == 3 and dist_env.rank == 0:
        _log.info(
            "train.compile under ZeRO 3: DeepSpeed's parameter gathering makes torch.compile recompile and "
            "run parts of the model eagerly, so expect little gain; --no-compile skips the compile time"
        )

    if options.data:
        data_dir = Path(options.data)
    else:
        try:
            data_dir = ensure_default_dataset(
                vocab_size=model_cfg.vocab_size or 4096, progress=options.progress and dist_env.rank == 0
            )
        except VocabSizeError as err:  # its text names prepare_data.py's --vocab-size, which train.py has not
            fix = f"lower it to <= {err.bound}" if err.too_large else f"raise it to >= {err.bound}"
            raise NgptConfigError(
                f"model.vocab_size {err.asked} ({config_path}) does not fit the default corpus, whose tokenizer can "
                f"have {'at most' if err.too_large else 'at least'} {err.bound} pieces: {fix}, or train on a "
                "dataset of your own (--data, prepared by launch/prepare_data.py)"
            ) from None
    meta = load_dataset_meta(data_dir)
    check_tokenizer_agrees(meta)
    if model_cfg.vocab_size is None:
        model_cfg.vocab_size = meta.vocab_size
    else:
        check_vocab_matches(meta, model_cfg.vocab_size, data_dir)
    model_cfg.validate(f"model config ({config_path})")
    if options.world_size is None:  # a dry run plans for other machines, whose memory this one cannot see
        model_parallel = train_cfg.tensor_parallel_size * train_cfg.pipeline_parallel_size
        # Activations per rank at this micro batch and context (the state alone passed long-context runs that
        # the OOM killer then ended at their first step): a lower bound, measured on a two-block meta copy.
        activations = memory_plan.activations_at_least(
            model_cfg,
            micro_batch=plan.micro_batch,
            precision=precision_of(ds_config),
            sequence_parallel=train_cfg.sequence_parallel_size,
            checkpoint_every=train_cfg.checkpoint_every,
            tensor_parallel=train_cfg.tensor_parallel_size,
            pipeline_parallel=train_cfg.pipeline_parallel_size,
        )
        close = memory_plan.check_state_fits(
            model_cfg,
            world_size=dist_env.world_size,
            local_world_size=dist_env.local_world_size,
            node_bytes=_node_memory_bytes(accelerator),
            source=str(config_path),
            zero_stage=zero_stage_of(ds_config),
            precision=precision_of(ds_config),
            model_parallel=model_parallel,
            activations=activations,
            pipeline_parallel=train_cfg.pipeline_parallel_size,
            available=memory_plan.node_memory_available(accelerator),
            process_available=memory_plan.process_memory_available(),
        )
        # Each node checks its own memory: a warning of another node than rank 0's is logged there (it was
        # dropped, and a second node other jobs filled met the OOM killer in silence).
        if close and dist_env.local_rank == 0:
            _log.warning(close, extra=log.NODE_WARNING)
    check_tensor_parallel(
        train_cfg.tensor_parallel_size,
        dist_env.world_size,
        n_head=model_cfg.n_head,
        vocab_size=model_cfg.vocab_size,
        mlp_width=model_cfg.mlp_width,
    )

    # The trainer's loaders refuse data without a validation split, or with fewer windows at this context
    # than one optimizer step (train) or one batch (validation); they start after the engine, so ask here.
    TokenWindowLoader(
        data_dir, "train", model_cfg.seq_len, plan.micro_batch, 0, plan.data_parallel, train_cfg.seed, plan.grad_accum
    )
    validation_batches(data_dir, model_cfg.seq_len, plan.micro_batch, 0, plan.data_parallel)

    out_dir = run_folder(options.out, config_path)
    if options.out is None:
        check_default_folder_is_this_configs(out_dir, config_path)
    preflight.check_writable(out_dir)
    if options.world_size is None:  # a dry run plans for other machines, whose limits this one cannot see
        preflight.check_file_size_limit(
            memory_plan.parameters_at_least(model_cfg),
            dist_env.world_size,
            out_dir,
            pipeline_zero0=train_cfg.pipeline_parallel_size > 1 and zero_stage_of(ds_config) == 0,
        )
    run = RunConfig(
        config_source=str(config_path),
        config_source_absolute=os.path.abspath(config_path),
        config_source_sha256=config_file_sha256(config_path),
        model=model_cfg,
        train=train_cfg,
        deepspeed=ds_config,
        deepspeed_source=options.deepspeed_config,
        data_dir=str(data_dir),
        out_dir=str(out_dir),
        data_dir_absolute=str(data_dir.absolute()),
        tokenizer_sha256=meta.tokenizer_sha256,
    )
    prepared = Prepared(run=run, plan=plan, dist_env=dist_env, data=meta)
    return choose_resume(prepared, options.resume, collective=False) if resume else prepared


def _here_note(ds_config: dict[str, Any], source: str, *, fp16_supported: bool) -> str | None:
    """For a dry run for other machines, planned on a CPU: what a run on this machine itself would do
    differently (train in fp32 instead of bf16, refuse fp16), or None."""
    if precision_of(ds_config) == "fp16" and not fp16_supported:
        return (
            f"DeepSpeed config {source} enables fp16, which this CPU does not support: this plan is for the "
            "ranks' machines (GPUs), and a run on this machine itself would be refused"
        )
    if fall_back_from_slow_cpu_bf16(copy.deepcopy(ds_config), source) is not None:
        return (
            f"DeepSpeed config {source} enables bf16, planned as bf16 for the ranks' machines; this CPU has no "
            "native bf16 matmul (AVX512 or AMX), so a run on this machine itself would train in fp32 "
            "(NGPT_DS_CPU_BF16=1 keeps bf16)"
        )
    return None


def _node_memory_bytes(accelerator: Any) -> int:
    """This node's memory in all: RAM, and on GPUs the memory of every device the node's ranks can see."""
    import psutil

    imposed = os.environ.get("NGPT_DS_NODE_MEMORY_BYTES")  # tests, and nodes shared with other jobs
    if imposed:
        # "16G" had been a ValueError traceback on every rank; "²" passes str.isdigit and int() refuses it
        if not re.fullmatch(r"\s*[0-9]+\s*", imposed) or int(imposed) == 0:
            raise NgptConfigError(
                f"NGPT_DS_NODE_MEMORY_BYTES={imposed!r} must be the node's memory as a whole number of bytes, e.g. "
                f"{64 << 30} for 64 GiB; or unset it to use the node's own"
            )
        return int(imposed)
    total = psutil.virtual_memory().total
    if accelerator.device_name() != "cpu":
        total += sum(int(accelerator.total_memory(i)) for i in range(accelerator.device_count()))
    return total


def config_name(config: str | None, model: str | None) -> str:
    """--config, or the tiny preset of --model (nGPT by default) when it is not given."""
    return config or f"{model or 'ngpt'}_tiny"


def run_folder(out: str | None, config_path: Path) -> Path:
    """--out, or runs/<the config's name> when it is not given. A leading ~ is the home folder: the shell
    leaves `--out=~/runs/x` as written, and the run went into a folder named '~' in the working folder (which
    `rm -rf ~` then deletes the home folder in place of), while the --out checks (run_lock) looked at the home's."""
    return Path(out).expanduser() if out else Path("runs") / config_path.stem


def choose_resume(prepared: Prepared, resume: str, *, collective: bool) -> Prepared:
    """--resume -> `prepared` with the verified checkpoint that fits this run (model config, tokenizer,
    parallel layout), or unchanged to start fresh. A damaged checkpoint is skipped (auto) or refused.

    collective: every rank calls this after the process group starts; each checkpoint file is hashed by
    one rank and all ranks get the same answer (ngpt_ds.train.resume.resolve_resume_on_all_ranks).
    Otherwise this rank reads every file itself.
    """
    run, out_dir = prepared.run, Path(prepared.run.out_dir)
    # Recorded in config.yaml for the next resume. Set after the ranks compared their configs: node-local
    # copies of one dataset, one with block hashes and one without, differ here and are the same data
    # (ngpt_ds.data.loader.same_dataset_on_every_rank compares the data itself).
    run.train_data_sha256 = preflight.train_data_fingerprint(prepared.data)
    warn = _warn_on_rank0(prepared.dist_env.rank)
    if collective:
        resume_from = resolve_resume_on_all_ranks(out_dir, resume, warn)
    else:
        resume_from = resolve_resume(out_dir, resume, warn)
    if resume_from is None:
        return prepared
    try:
        preflight.check_resume_fits(resume_from, run.model, prepared.data)  # same model config and tokenizer
        preflight.check_resume_precision(resume_from, run.deepspeed, run.deepspeed_source)  # fp32, bf16, fp16
        preflight.check_resume_seed(resume_from, run.train.seed)  # the data order
    except NgptConfigError as err:
        refusal = _without_a_refused_resume_none(str(err), out_dir)
        if resume != "auto":
            if refusal == str(err):
                raise
            raise NgptConfigError(refusal) from None
        raise NgptConfigError(chosen_by_auto(refusal, resume_from, out_dir)) from None
    # Another data-parallel size: converted after the run lock (ngpt_ds.train.reshape_convert); what DeepSpeed
    # cannot convert is refused here, before any engine starts.
    layout = reshape_plan.current_layout(
        run.deepspeed,
        prepared.dist_env.world_size,
        run.train.tensor_parallel_size,
        pipeline_parallel=run.train.pipeline_parallel_size,
        sequence_parallel=run.train.sequence_parallel_size,
    )
    resize = reshape_plan.plan(resume_from, layout, out_dir)
    return dataclasses.replace(prepared, resume_from=resume_from, reshape=resize)


_OR_RESUME_NONE = " (or --resume none)"


def _without_a_refused_resume_none(refusal: str, out_dir: Path) -> str:
    """preflight's refusals of a checkpoint that does not fit end "start a new run with another --out (or --resume
    none)". --resume none on this --out is refused while it holds a checkpoint (`resolve_resume`: "--resume none,
    but ... already holds checkpoints"), as it always does where --resume auto chose one there: then the advice
    is another --out alone. Kept where --resume none here starts a new run (a checkpoint from elsewhere named)."""
    if not refusal.endswith(_OR_RESUME_NONE):
        return refusal
    try:
        resolve_resume(out_dir, "none", lambda line: None)
    except NgptConfigError:
        return refusal.removesuffix(_OR_RESUME_NONE)
    return refusal


def chosen_by_auto(refusal: str, checkpoint: Path, out_dir: Path) -> str:
    """A refusal of the checkpoint `--resume auto` chose, worded as chosen: it read "--resume <path>: ...", a
    path the user never typed (auto is the default), so the run's own --out looked like the wrong argument."""
    named = f"--resume {checkpoint}: "
    why = refusal[len(named) :] if refusal.startswith(named) else refusal
    return (
        f"--out {out_dir} holds a run, and --resume auto (the default) continues it from its newest checkpoint, "
        f"{checkpoint}: {why}"
    )


def _warn_on_rank0(rank: int):
    return _log.warning if rank == 0 else (lambda line: None)


def skip_shared_memory_collective_build(ops: Any) -> None:
    """Mark DeepSpeed's deepspeed_shm_comm op incompatible in `ops` (deepspeed.ops), so that its one reader,
    deepspeed.comm.torch.build_shm_op (`__compatible_ops__.get(NAME, False)`), builds nothing.

    Without reading `ops.__compatible_ops__`: since DeepSpeed 0.19.7 that first read probes every op builder
    (async_io compiles and links a C test program, setuptools is imported; on GPUs each CUDA op asks nvcc), 1-2 s of
    wall per rank on CPU, for a dict whose only read in training is this entry. A dict not yet made starts as this
    one entry; one already made (DeepSpeed 0.19.6 makes it at import, or an earlier read) gets the entry."""
    vars(ops).setdefault("__compatible_ops__", {})["deepspeed_shm_comm"] = False


def init_process_group(dist_env: distributed.DistEnv, timeout_s: int) -> None:
    """torch.distributed through DeepSpeed: gloo on CPU, NCCL on GPUs."""
    import deepspeed
    import deepspeed.ops

    # Nothing in training uses DeepSpeed's shared-memory CPU collective; skipping it saves
    # a 30-45 s g++ build (of the deepspeed_shm_comm op) on every fresh CPU machine.
    skip_shared_memory_collective_build(deepspeed.ops)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    if dist_env.port_chosen_here:
        # A one-process run's port, probed free by `discover`, could be taken by any process opening a connection
        # before torch listened on it (CI: 'rank 0 cannot listen ... another process on this host holds that
        # port'). Its rendezvous server listens now, on a port the system chooses, and torch's env:// rendezvous
        # shares it (as rank 0 of an mpirun job does): nobody else was told the probed one.
        dist_env = dataclasses.replace(dist_env, master_port=distributed._listen_for_rendezvous(dist_env.master_addr))
    distributed.export(dist_env)
    distributed.set_collective_timeout(timedelta(seconds=timeout_s))  # also DeepSpeed's own groups
    from deepspeed.accelerator import get_accelerator

    # The accelerator the run trains on, not torch.cuda.is_available(): DS_ACCELERATOR=cpu on a machine with
    # GPUs trains on CPU ranks, and set_device(LOCAL_RANK) there stopped every rank past the GPU count.
    accelerator = get_accelerator()
    on_cpu = accelerator.device_name() == "cpu"
    if on_cpu:
        if "OMP_NUM_THREADS" not in os.environ:
            # Ranks sharing a machine split its cores (torchrun does this, the deepspeed launcher does not).
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist_env.local_world_size))
        _log.debug("host allocator: %s", hostmem.keep_freed_memory())
    problem = None if on_cpu else device_problem(accelerator, dist_env.local_rank)
    if problem is not None and dist_env.world_size == 1:
        raise NgptConfigError(problem)
    try:
        # bounded: a port held by a program that listens and never answers held torch's client for good
        with rendezvous_failures.bounded_rendezvous(dist_env, timeout_s):
            deepspeed.init_distributed(auto_mpi_discovery=False, timeout=timedelta(seconds=timeout_s))
    except torch.distributed.DistError as err:  # a store timeout, a refused or taken port: one line, not frames
        if problem is not None:  # the others never came (or already stopped): this rank's own fault comes first
            raise NgptConfigError(problem) from None
        raise rendezvous_failures.rendezvous_failure(err, dist_env, timeout_s) from None
    if not on_cpu:
        check_devices_on_all_ranks(dist_env, problem, accelerator.device_name())
        # before any NCCL collective: NCCL's object collectives and barrier use the current device
        accelerator.set_device(dist_env.local_rank)


def start_engine(
    run: RunConfig, groups: ParallelGroups | SequenceParallelGroups | None = None, load_universal: bool = False
) -> DeepSpeedEngine:
    """Build the model (tensor-parallel shards when groups.tp_size > 1), optimizer and schedule,
    and wrap them in a DeepSpeed engine (ZeRO over the data-parallel group). `load_universal`: the
    engine will load a universal checkpoint (a resume at another data-parallel size)."""
    import deepspeed
    from deepspeed.checkpoint.constants import (
        UNIVERSAL_CHECKPOINT_INFO,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    train = run.train
    # load_model_and_train resolved these architecture defaults (TrainConfig.resolve).
    assert train.weight_decay is not None and train.warmup_steps is not None
    torch.manual_seed(train.seed)  # every rank builds the same full model, then keeps its shards
    model = build_model(run.model)
    model.checkpoint_every = train.checkpoint_every  # activation checkpointing; parameters unchanged
    tensor_parallel = groups is not None and groups.tp_size > 1
    if tensor_parallel:
        parallelize(model, cast(ParallelGroups, groups))  # tp_size > 1: only ParallelGroups have that
    sequence_parallel = groups is not None and groups.sp_size > 1
    if sequence_parallel:  # Ulysses attention, RoPE offset, chunked inputs, full-length loss
        parallelize_sequence(model, cast(SequenceParallelGroups, groups))  # sp_size > 1: only those have that
    if train.pipeline_parallel_size > 1:  # this rank's stage only (ngpt_ds.parallel.pipeline)
        model = build_pipeline(model, train.pipeline_parallel_size)
    optimizer = build_optimizer(model, lr=train.lr, betas=train.betas, eps=train.eps, weight_decay=train.weight_decay)
    schedule = build_schedule(
        optimizer, max_steps=train.max_steps, warmup_steps=train.warmup_steps, min_lr_ratio=train.min_lr / train.lr
    )
    # Saved into every checkpoint, so DeepSpeed's ds_to_universal converts it as it is (README
    # "Resuming at another world size"); a model attribute, as the client_state key is reserved.
    setattr(model, UNIVERSAL_CHECKPOINT_INFO, {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE})
    ds_config = run.deepspeed
    if load_universal:
        ds_config = {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}
    ds_compat.check_module_granularity(model, ds_config)  # every rank builds the same model: all stop together
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=schedule,
        config=ds_config,
        mpu=groups if tensor_parallel or sequence_parallel else None,
    )
    ds_compat.drop_warmup_optimizer_state(engine)  # ZeRO 0 bf16: the first update would be 0.73x
    ds_compat.count_tensor_parallel_gradients(engine)  # ZeRO 0 bf16: shards missing from the clipping norm
    ds_compat.count_sequence_parallel_gradients(engine)  # BF16_Optimizer: an empty norm list on sequence ranks > 0
    if train.compile:
        # nn.Module.compile in place (not torch.compile's wrapper): parameter names, hence the
        # checkpoints' state-dict keys, stay the eager model's; the hypersphere hook runs after
        # engine.step, outside the compiled graphs.
        engine.compile()
    return engine
