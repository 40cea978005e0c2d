"""The dry run (`launch/train.py --dry-run [RANKS]`): every startup check of a real run, then the plan.

It runs `prepare` (configs, DeepSpeed JSON, data, resume point, parallel layout; the same checks and the
same errors as training) for RANKS ranks, then prints the process groups the trainer would create, the
batch and each rank's share of a sequence, and an estimate of the memory per rank
(ngpt_ds.train.memory_plan). No process group, engine or output folder is created, so a preset for a
GPU cluster (ngpt_0.5b_8k) is checked on a laptop in seconds.
"""

from __future__ import annotations

from pathlib import Path

from ngpt_ds.data.loader import TokenWindowLoader
from ngpt_ds.parallel.sequence import SequenceLayout
from ngpt_ds.train.builder import Prepared, TrainOptions, prepare
from ngpt_ds.train.ds_config import gradient_clipping_of, precision_of, zero_stage_of
from ngpt_ds.train.ds_schema import block
from ngpt_ds.train.memory_plan import estimate_memory
from ngpt_ds.train.out_folder import check_out_folder

_SHOWN_GROUPS = 4


def _groups(groups: list[list[int]]) -> str:
    shown = " ".join(str(g) for g in groups[:_SHOWN_GROUPS])
    return shown + (f" ... ({len(groups)} groups)" if len(groups) > _SHOWN_GROUPS else "")


def plan_report(prepared: Prepared) -> str:
    """The plan of a prepared run, as printed lines."""
    run, plan, world = prepared.run, prepared.plan, prepared.dist_env.world_size
    m, t, ds = run.model, run.train, run.deepspeed
    tp, pp, sp = t.tensor_parallel_size, t.pipeline_parallel_size, t.sequence_parallel_size
    dp = plan.data_parallel
    zero_ranks = world // (tp * pp)  # ZeRO's group: the data (x sequence) ranks of one model shard
    stage, precision = zero_stage_of(ds), precision_of(ds)
    # As ds_masters reads it: DeepSpeed takes `"offload_optimizer": null` for no offload, which stopped the plan in
    # an AttributeError traceback where the run trained.
    offload = block(block(ds, "zero_optimization"), "offload_optimizer").get("device") == "cpu"
    lines = [
        f"dry run of {run.config_source} on {world} rank(s): every startup check passed; nothing was trained, "
        "no process group or output folder was created",
        f"model: {m.display_name}, {m.n_layer} layers, d {m.n_embd}, {m.n_head} heads, context {m.seq_len}, "
        f"vocab {m.vocab_size} (data {run.data_dir})",
        f"parallel: tensor {tp} x pipeline {pp} x sequence {sp} x data {dp} = {world} rank(s)",
    ]
    if tp > 1:
        lines.append(
            "  tensor-parallel groups (adjacent): " + _groups([list(range(r, r + tp)) for r in range(0, world, tp)])
        )
    if sp > 1:
        layout = SequenceLayout(world, sp)
        lines += [
            "  sequence-parallel groups (adjacent; one sample each): " + _groups(layout.sequence_groups()),
            "  data-parallel groups (one chunk position each): " + _groups(layout.data_groups()),
        ]
    if stage:
        lines.append(f"  ZeRO {stage} partitions over {zero_ranks} rank(s)" + (" (data x sequence)" if sp > 1 else ""))
    positions = m.seq_len // sp
    lines.append(
        f"batch: micro {plan.micro_batch} x accumulation {plan.grad_accum} x data-parallel {dp} = "
        f"{plan.global_batch} sequences = {plan.global_batch * m.seq_len} tokens per optimizer step"
        + (
            f"; each rank holds {positions} positions of each sequence, attention sees all {m.seq_len} "
            f"positions of {m.n_head // sp} heads"
            if sp > 1
            else ""
        )
    )
    lines.append(
        f"deepspeed ({run.deepspeed_source}): ZeRO {stage}, {precision}, gradient clipping "
        f"{gradient_clipping_of(ds)!r}"
        + (", reduce_scatter false" if stage == 3 and sp > 1 else "")
        + (", optimizer offloaded to the CPU" if offload else "")
        + f"; activation checkpointing {t.activation_checkpointing}"
        + (
            "; compile on (the first step waits for it; each machine's C++ compiler or Triton is checked "
            "when the run starts there)"
            if t.compile
            else "; compile off"
        )
    )
    # The loader refuses a split with fewer windows than one optimizer step, as the trainer's would.
    loader = TokenWindowLoader(run.data_dir, "train", m.seq_len, plan.micro_batch, 0, dp, t.seed, plan.grad_accum)
    lines.append(
        f"data: {loader.windows_per_epoch} training windows of {m.seq_len + 1} tokens = "
        f"{loader.batches_per_epoch // plan.grad_accum} optimizer steps per epoch"
    )
    memory = estimate_memory(
        m,
        micro_batch=plan.micro_batch,
        precision=precision,
        zero_stage=stage,
        zero_ranks=zero_ranks,
        tensor_parallel=tp,
        pipeline_parallel=pp,
        sequence_parallel=sp,
        checkpoint_every=t.checkpoint_every,
        optimizer_on_cpu=offload,
    )
    lines += ["memory per rank: " + memory.describe()[0]] + ["  " + line for line in memory.describe()[1:]]
    if prepared.resume_from is not None:
        lines.append(f"resume: from {prepared.resume_from}" + (" (universal conversion)" if prepared.reshape else ""))
    else:
        lines.append(f"resume: none; a new run in {run.out_dir}")
    return "\n".join(lines)


def dry_run(options: TrainOptions) -> str:
    """Check everything a run would check at startup for options.world_size ranks (None: the launched
    ones) and return the plan. Raises NgptConfigError on bad input, as training would."""
    prepared = prepare(options)
    # What the run refuses once the lock is taken: a dry run that passed it said "every startup check passed"
    # about an --out the run then refused (a dataset folder, another run's checkpoints/, a user's config.yaml).
    check_out_folder(Path(prepared.run.out_dir))
    return plan_report(prepared)
