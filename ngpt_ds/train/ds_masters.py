"""Where the DeepSpeed JSON puts the master weights and the optimizer state, checked before any engine exists.

nGPT renormalizes the fp32 master weights after every optimizer step, in memory, and the trainer steps its
own torch AdamW (the YAML train section). So the JSON may not ask DeepSpeed for 16-bit masters, NVMe
offload, or the offload modes that step DeepSpeed's own optimizers; ZeRO-Offload to the CPU works where
DeepSpeed does it (README "Configs").
"""

from __future__ import annotations

from typing import Any

import torch

from ngpt_ds.errors import Problems
from ngpt_ds.train.ds_schema import bf16_block_name, precision_of
from ngpt_ds.train.ds_schema import block as _block


def check_masters_and_offload(config: dict[str, Any], stage: Any, p: Problems) -> None:
    """Add to `p` every master-weight or offload setting the trainer cannot run; fills in
    `zero_force_ds_cpu_optimizer` (false) under a CPU optimizer offload that leaves it out."""
    for block in ("offload_optimizer", "offload_param"):
        device = _block(_block(config, "zero_optimization"), block).get("device")
        # NVMe offload swaps the fp32 masters in and out of memory: the hypersphere hook would
        # renormalize copies that are then swapped away.
        p.check(
            device != "nvme",
            f"zero_optimization.{block}.device",
            device,
            "NVMe offload is not supported (nGPT's renormalization works on the fp32 master weights "
            'in memory); use "cpu" or remove the block',
        )
    # DeepSpeed keeps bf16/fp16 masters (and bf16 Adam moments) on request, at stages 1-3 without a word: each
    # renormalization then rounds back to 16 bits, and the Adam updates under half a bf16 step (the whole tail
    # of the cosine schedule) are lost. The run said "bf16" and its export carried 16-bit values as fp32.
    # DeepSpeed reads the bf16 settings from "bfloat16", its old name for the block, when "bf16" is absent or null:
    # masters asked for there were accepted here and reached DeepSpeed.
    bf16 = bf16_block_name(config)
    for block, key in (
        (bf16, "bf16_master_weights_and_grads"),
        (bf16, "bf16_optimizer_states"),
        ("fp16", "fp16_master_weights_and_grads"),
    ):
        value = _block(config, block).get(key)
        p.check(
            value is None or value is False,
            f"{block}.{key}",
            value,
            "16-bit master weights are not supported: nGPT renormalizes the fp32 masters after every step "
            '(README "Configs"); remove the key',
        )
    _check_offload(config, stage, p)
    _check_round_robin(config, stage, p)
    _check_zero0_accumulation(config, stage, p)
    _check_elastic_checkpoint(config, stage, p)


def _check_elastic_checkpoint(config: dict[str, Any], stage: Any, p: Problems) -> None:
    """`elastic_checkpoint` at ZeRO 1/2 saves the fp32 master partitions merged, without the optimizer's step
    where DeepSpeed 0.19 reads it back for the trainer's torch AdamW: a run trained and saved, and every resume
    stopped each rank in a bare AssertionError traceback (KeyError 'base_optimizer_state_step' with the key
    removed), so none of its checkpoints could be resumed. A resume at another number of ranks goes through the
    universal checkpoint instead (README "Resuming at another world size"). DeepSpeed ignores it at stages 0
    and 3."""
    value = _block(config, "zero_optimization").get("elastic_checkpoint")
    p.check(
        value in (None, False) or stage not in (1, 2),
        "zero_optimization.elastic_checkpoint",
        value,
        "not supported: DeepSpeed cannot resume the checkpoints it writes with it for the trainer's AdamW; "
        "a resume at another number of ranks needs no setting (the universal checkpoint); remove it",
    )


def _check_zero0_accumulation(config: dict[str, Any], stage: Any, p: Problems) -> None:
    """`data_types.grad_accum_dtype` at ZeRO 0: DeepSpeed picks the optimizer that holds the fp32 masters from the
    model's precision and this dtype, and without ZeRO knows only the pairs where they are equal. Any other
    (fp32 with bf16, bf16 with fp32, bf16 with fp16) stopped every rank inside deepspeed.initialize, after the
    process group had started, in a NotImplementedError traceback ("unsupported mix of model_dtype=... and
    grad_accum_dtype=...")."""
    from deepspeed.runtime.config import DtypeEnum

    value = _block(config, "data_types").get("grad_accum_dtype")
    if stage != 0 or value is None:
        return
    try:
        accumulated = DtypeEnum(value).value
    except (ValueError, TypeError):  # not a dtype name: the schema check names it
        return
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    model = precision_of(config)
    p.check(
        names.get(accumulated) == model,
        "data_types.grad_accum_dtype",
        value,
        f'DeepSpeed accumulates gradients only in the model\'s precision ({model}) at ZeRO stage 0; set it to "{model}" '
        "or remove it, or set zero_optimization.stage to 1, 2 or 3",
    )


def _check_round_robin(config: dict[str, Any], stage: Any, p: Problems) -> None:
    """`round_robin_gradients` at ZeRO 1/2: DeepSpeed 0.19 then lays out the flat parameter group in its
    round-robin order, but links each parameter to its slice of the fp32 master partition (`_hp_mapping`) as if
    in model order, unless alignment padding was needed. The hypersphere hook, which finds the masters through
    that link, renormalized slices of other parameters: on 2 ranks the weights were 0.17 off the sphere after 3
    steps while the logged deviation, read through the same link, said 1.5e-7. The slice map a checkpoint
    records for the universal form (a resume at another data-parallel size) is built from the same link.
    DeepSpeed ignores the key at stages 0 and 3."""
    value = _block(config, "zero_optimization").get("round_robin_gradients")
    p.check(
        value in (None, False) or stage not in (1, 2),
        "zero_optimization.round_robin_gradients",
        value,
        "not supported: DeepSpeed links the parameters to the wrong slices of the fp32 master weights when it "
        "reorders them, and nGPT's renormalization and the universal checkpoint (a resume at another number of "
        "ranks) work through that link; set it to false or remove it",
    )


def _check_offload(config: dict[str, Any], stage: Any, p: Problems) -> None:
    """ZeRO-Offload to the CPU where DeepSpeed does it, with the trainer's optimizer.

    - The trainer brings its own torch AdamW, and DeepSpeed refuses a client optimizer under
      offload_optimizer unless `"zero_force_ds_cpu_optimizer": false` (its default is true): a JSON
      without that key stopped inside deepspeed.initialize with a ZeRORuntimeException traceback on
      every rank (exit 1), after the process group had started. Left out, it is set to false here
      (as the batch fields are filled in); true is refused.
    - DeepSpeed offloads the optimizer at stages 1-3 and the parameters at stage 3 only; below that it
      ignored the block without a word, and the run held everything in accelerator memory."""
    zero = _block(config, "zero_optimization")
    # DeepSpeed still maps its old spellings onto the blocks, past every check below: cpu_offload at ZeRO 0
    # stopped deepspeed.initialize in a ZeRORuntimeException, cpu_offload_param at ZeRO 2 was ignored.
    for old, new in (
        ("cpu_offload", '"offload_optimizer": {"device": "cpu"}'),
        ("cpu_offload_param", '"offload_param": {"device": "cpu"}'),
        ("cpu_offload_use_pin_memory", '"pin_memory": true in the offload_optimizer or offload_param block'),
    ):
        p.check(
            zero.get(old) in (None, False),
            f"zero_optimization.{old}",
            zero.get(old),
            f"DeepSpeed's old spelling, which the trainer does not check: write {new} in zero_optimization instead",
        )
    optimizer_device = _block(zero, "offload_optimizer").get("device")
    param_device = _block(zero, "offload_param").get("device")
    if optimizer_device == "cpu":
        force = config.setdefault("zero_force_ds_cpu_optimizer", False)  # left out: DeepSpeed reads true
        p.check(
            force is False,
            "zero_force_ds_cpu_optimizer",
            force,
            "must be false (or left out) with zero_optimization.offload_optimizer: the trainer steps its own AdamW "
            "on the CPU copy, as the optimizer is set in the YAML train section, and DeepSpeed refuses it otherwise",
        )
    # A partial offload (ratio < 1), SuperOffload and ZenFlow step DeepSpeed's own optimizers only: with the
    # trainer's AdamW they stopped inside deepspeed.initialize in an assertion or TypeError on every rank.
    offload = _block(zero, "offload_optimizer")
    ratio = offload.get("ratio", 1.0)
    p.check(
        ratio == 1 and not isinstance(ratio, bool),
        "zero_optimization.offload_optimizer.ratio",
        ratio,
        "a partial offload needs DeepSpeed's CPU Adam; the trainer steps its own AdamW: set it to 1.0 or remove it",
    )
    super_offload = offload.get("super_offload")
    p.check(
        super_offload is None or super_offload is False,
        "zero_optimization.offload_optimizer.super_offload",
        super_offload,
        "SuperOffload steps DeepSpeed's own CPU Adam; the trainer steps its own AdamW: remove it",
    )
    p.check(
        zero.get("zenflow") is None,
        "zero_optimization.zenflow",
        zero.get("zenflow"),
        "ZenFlow steps DeepSpeed's own optimizer; the trainer steps its own AdamW: remove the block",
    )
    p.check(
        optimizer_device in (None, "none") or stage != 0,
        "zero_optimization.offload_optimizer.device",
        optimizer_device,
        "DeepSpeed offloads the optimizer at ZeRO stages 1-3 and ignores the block at stage 0; set "
        "zero_optimization.stage to 1, 2 or 3, or remove the block",
    )
    p.check(
        param_device in (None, "none") or stage == 3,
        "zero_optimization.offload_param.device",
        param_device,
        f"DeepSpeed offloads the parameters at ZeRO stage 3 only and ignores the block at stage {stage}; set "
        "zero_optimization.stage to 3, or remove the block",
    )
