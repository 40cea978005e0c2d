"""DeepSpeed JSON keys the trainer refuses by name, each with the reason and the fix.

Three kinds, each a function called by ngpt_ds.train.ds_config.check_ds_config:

- blocks whose job the YAML does (`optimizer`, `scheduler`, `activation_checkpointing`);
- settings DeepSpeed accepts that change the trainer's loop without a word (accumulation, the all-reduce
  op, data efficiency);
- switches the trainer owns (autocast, parallel sizes) or that break its checkpoints.

Each refusal records its problem on the caller's `Problems`, so one start names every bad key at once.
Tested with DeepSpeed 0.19.x, whose key names these are.
"""

from __future__ import annotations

from typing import Any

from ngpt_ds.errors import Problems
from ngpt_ds.train.ds_schema import block as _block


def check_owned_blocks(config: dict[str, Any], p: Problems) -> None:
    """Blocks the YAML train section replaces: two sources for one setting would silently compete."""
    for block in ("optimizer", "scheduler"):
        if block in config:
            p.add(
                block,
                "{...}",
                "remove it: the optimizer and LR schedule are set in the YAML train section "
                "(lr, min_lr, warmup_steps, weight_decay, betas)",
            )
    # DeepSpeed's block configures deepspeed.checkpointing, which the model never calls (it checkpoints with
    # torch.utils.checkpoint, as train.activation_checkpointing says): partition_activations, cpu_checkpointing
    # and the rest were ignored without a word, and the memory they promise never saved. A block that turns
    # everything off (DeepSpeed's example configs carry one) asks for nothing, and runs started with it resume.
    checkpointing = config.get("activation_checkpointing")
    if "activation_checkpointing" in config and not (
        isinstance(checkpointing, dict) and not any(checkpointing.values())
    ):
        p.add(
            "activation_checkpointing",
            "{...}",
            "remove it: activation checkpointing is set in the YAML train section (train.activation_checkpointing: "
            "none, blocks or {every_k: K}); DeepSpeed's block applies only to models that call "
            "deepspeed.checkpointing, which ngpt_ds does not",
        )


def _enables_anything(value: Any) -> bool:
    """Whether a block sets any `enabled` inside it to true."""
    if isinstance(value, dict):
        return any((key == "enabled" and item is True) or _enables_anything(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_enables_anything(item) for item in value)
    return False


def check_loop_settings(config: dict[str, Any], p: Problems) -> None:
    """Settings DeepSpeed accepts and runs that change what the trainer's loop does without a word.

    - `managed_gradient_accumulation` other than true: the loop calls engine.step() after every micro-batch and
      leaves the accumulation boundary to DeepSpeed's count; unmanaged, every call stepped the optimizer and the LR
      schedule (accumulation 2: each step of the log two updates of half the batch, the schedule at 0 by mid-run).
      DeepSpeed reads null as unmanaged too.
    - `gradient_allreduce_op` "sum": the loss is a mean over the global batch, and a sum multiplies the gradient by
      the data-parallel size, so gradient_clipping and the logged gradient norm changed with the number of ranks
      (2 ranks: twice the norm of the same batch on 1).
    - `data_efficiency` turning anything on: its curriculum data sampling works through DeepSpeed's own data
      loader and random-LTD on layers converted by DeepSpeed, neither of which the trainer uses: a seqlen
      curriculum trained the same losses as none, and random_ltd stopped every rank in a KeyError traceback."""
    if "managed_gradient_accumulation" in config:
        managed = config["managed_gradient_accumulation"]
        p.check(
            managed is True,
            "managed_gradient_accumulation",
            managed,
            "remove it: the trainer leaves the accumulation boundary to DeepSpeed's count of "
            "gradient_accumulation_steps (true, DeepSpeed's default); otherwise every micro-batch steps the "
            "optimizer and the LR schedule",
        )
    op = config.get("gradient_allreduce_op")
    p.check(
        not (isinstance(op, str) and op.lower() == "sum"),
        "gradient_allreduce_op",
        op,
        "remove it: the trainer's gradient is that of the mean loss over the global batch ('mean', DeepSpeed's "
        "default); a sum multiplies it by the data-parallel size, which changes gradient clipping and the logged "
        "norm with the number of ranks",
    )
    p.check(
        not _enables_anything(config.get("data_efficiency")),
        "data_efficiency",
        "{...}",
        "remove it: DeepSpeed's curriculum data sampling applies only to its own data loader and random-LTD only "
        "to layers it has converted, neither of which ngpt_ds uses (the trainer reads its token windows itself)",
    )


def check_owned_switches(
    config: dict[str, Any], p: Problems, *, tensor_parallel: int, pipeline_parallel: int, sequence_parallel: int
) -> None:
    """Precision and parallel sizes the trainer sets from the YAML, and checkpoint switches that break its files."""
    # DeepSpeed's torch_autocast runs the forward in bf16/fp16 over fp32 weights, unseen by the trainer: its
    # startup line, config.yaml and the MFU peak said fp32 (engine.bfloat16_enabled() is False), and a resume
    # that toggled it passed the precision check. The bf16 / fp16 blocks are the trainer's precision switch.
    autocast = _block(config, "torch_autocast").get("enabled")
    p.check(
        autocast is not True,
        "torch_autocast.enabled",
        autocast,
        'the trainer sets precision by the bf16 and fp16 blocks only; remove the torch_autocast block and use "bf16": '
        '{"enabled": true} (README "Configs")',
    )

    # DeepSpeed reads this key itself (outside its parser) and divides the world by it in its batch check,
    # while the trainer's groups follow the YAML: a JSON that disagrees failed that check in an assertion
    # traceback on every rank, after the process group had started.
    json_sp = config.get("sequence_parallel_size", sequence_parallel)
    p.check(
        json_sp == sequence_parallel and isinstance(json_sp, int) and not isinstance(json_sp, bool),
        "sequence_parallel_size",
        json_sp,
        f"sequence parallelism is set in the YAML: train.sequence_parallel_size (now {sequence_parallel}); "
        "remove the key from the JSON, or set the same value in the YAML",
    )
    # The layers are split by the YAML's sizes; the JSON's own, where they differ, were ignored without a word
    # (pipeline.stages: a run meant for 2 stages trained on 1) or split the model again (DeepSpeed's AutoTP,
    # tensor_parallel.autotp_size > 1: an AssertionError traceback inside deepspeed.initialize).
    autotp = _block(config, "tensor_parallel").get("autotp_size", 0)
    p.check(
        autotp in (0, 1) and not isinstance(autotp, bool),
        "tensor_parallel.autotp_size",
        autotp,
        f"tensor parallelism is set in the YAML: train.tensor_parallel_size (now {tensor_parallel}), and the "
        "trainer splits the layers itself; remove the key from the JSON",
    )
    stages = _block(config, "pipeline").get("stages", "auto")
    p.check(
        stages == "auto" or (stages == pipeline_parallel and isinstance(stages, int) and not isinstance(stages, bool)),
        "pipeline.stages",
        stages,
        f"pipeline stages are set in the YAML: train.pipeline_parallel_size (now {pipeline_parallel}); remove the "
        "key from the JSON, or set the same value in the YAML",
    )
    # DeepSpeed's step timers under its PipelineEngine: wall_clock_breakdown, and the flops profiler, which times
    # the steps with them, stopped the first backward on every rank in "AssertionError: bwd_microstep timer has
    # already been started" (DeepSpeed 0.19.8), after the engine had started.
    if pipeline_parallel > 1:
        why = (
            f"DeepSpeed's step timers fail under pipeline parallelism (train.pipeline_parallel_size = "
            f"{pipeline_parallel}: 'bwd_microstep timer has already been started' at the first backward); remove it"
        )
        profiler = _block(config, "flops_profiler").get("enabled")
        p.check(
            profiler is not True,
            "flops_profiler.enabled",
            profiler,
            f"{why}: the trainer's log lines give MFU, and bench/mfu.py measures FLOPs per token and MFU",
        )
        wall_clock = config.get("wall_clock_breakdown")
        p.check(
            wall_clock is not True,
            "wall_clock_breakdown",
            wall_clock,
            f"{why}: the trainer's log lines give the step time (ms/step)",
        )
    # Two checkpoint switches that break the trainer's checkpoints, refused at every start (a fresh run with
    # them trains and saves, and fails only when it first resumes):
    # - load_universal: DeepSpeed then reads every step_N checkpoint as a universal one, and the restart
    #   stopped in its loader on every rank ("zero/optimizer_state.pt ... is missing"). The trainer sets it
    #   itself for a checkpoint it has converted (README "Resuming at another world size").
    # - use_node_local_storage: only each node's local rank 0 writes model states, so a tensor- or
    #   pipeline-parallel checkpoint lacked mp_rank_01_... and its resume stopped in an AssertionError; the
    #   trainer's checkpoints live on storage every node shares.
    checkpoint_block = config.get("checkpoint")
    for switch, why in (
        ("load_universal", "the trainer converts checkpoints to the universal format and loads them so by itself"),
        ("use_node_local_storage", "the trainer saves to --out, which every node must share"),
    ):
        value = checkpoint_block.get(switch) if isinstance(checkpoint_block, dict) else None
        p.check(not value, f"checkpoint.{switch}", value, f'remove it: {why} (README "Checkpoints")')
    # And two that replace torch.save's files, which every resume reads memory-mapped and verifies:
    # - checkpoint_serialization false: torch's legacy format, which cannot be memory-mapped; the run trained and
    #   saved, and its resume refused every checkpoint as damaged ("mmap can only be used with files saved with
    #   `torch.save(_use_new_zipfile_serialization=True)").
    # - writer (any block, {} included: DeepSpeed tests it against null): DeepSpeed's fast or decoupled writers;
    #   they stopped deepspeed.initialize in KeyError 'CROSS_SIZE' on every rank started by torchrun or python.
    checkpoint_settings = checkpoint_block if isinstance(checkpoint_block, dict) else {}
    serialization = checkpoint_settings.get("checkpoint_serialization", True)
    p.check(
        serialization is True,
        "checkpoint.checkpoint_serialization",
        serialization,
        "remove it (true, DeepSpeed's default): a resume reads checkpoints memory-mapped, which torch's legacy "
        "format cannot be, and would refuse every checkpoint of the run as damaged",
    )
    writer = checkpoint_settings.get("writer")
    p.check(
        writer is None,
        "checkpoint.writer",
        "{...}" if isinstance(writer, dict) else writer,
        "remove it: the trainer saves checkpoints with torch.save and verifies their files itself; DeepSpeed's "
        'checkpoint writers replace it (README "Checkpoints")',
    )


def yaml_field_home(key: str) -> str | None:
    """The fix for a top-level DeepSpeed key that DeepSpeed does not know but the YAML config does (a model: or
    train: field, or a whole section), or None. Called unknown, they got DeepSpeed's nearest keys as suggestions:
    `tensor_parallel_size` "did you mean 'tensor_parallel'?" (DeepSpeed's AutoTP block), `pipeline_parallel_size`
    "did you mean 'sequence_parallel_size'?", and `lr` or `seq_len` no word of where they go."""
    from dataclasses import fields

    from ngpt_ds.model.config import ModelConfig
    from ngpt_ds.train.config import TrainConfig

    if key in ("model", "train"):
        return f"the {key}: section of the YAML config (--config), not a DeepSpeed setting: move it into that file"
    if key == "gradient_checkpointing":  # Hugging Face's name; DeepSpeed's nearest key is gradient_clipping
        return (
            "not a DeepSpeed key (DeepSpeed would ignore it; Hugging Face's name): activation checkpointing is set in "
            "the YAML config, train.activation_checkpointing: blocks (or none, or {every_k: K})"
        )
    for section, config in (("train", TrainConfig), ("model", ModelConfig)):
        if key in {f.name for f in fields(config)}:
            return (
                f"a {section}: field of the YAML config (--config), not a DeepSpeed key (DeepSpeed would ignore it): "
                f"move it under {section}: there"
            )
    return None
