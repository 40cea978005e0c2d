"""Memory per rank of a planned run, estimated without allocating it (the dry run prints it).

- Parameters: counted exactly on a model built on torch's `meta` device (shapes, no storage).
- Weights, gradients and optimizer state follow DeepSpeed's ZeRO partitioning: the working copy in
  the run's precision (bf16: 2 bytes), the gradients in the same dtype, and the optimizer state as the
  fp32 master (4 bytes; none in fp32 at ZeRO 0, where the parameter is the master, while ZeRO 1-3 keep
  a copy of it in fp32 too) plus Adam's two moments (8 bytes). Stage 1 partitions the optimizer state over the ZeRO ranks (all data x sequence ranks),
  stage 2 the gradients too, stage 3 the weights too; ZeRO-Offload moves the optimizer state to the
  CPU. Tensor and pipeline parallelism divide all three by their size (the model is cut).
- Activations: what autograd keeps for the backward, measured by one forward on `meta` tensors of this
  rank's shape (micro-batch x seq_len / S positions) through the real model, counted by
  torch.autograd.graph.saved_tensors_hooks (parameters and repeats not counted). The attention core
  is counted as a fused kernel keeps it (q, k, v, output and the fp32 log-sum-exp: flash attention's
  residue, not the T x T matrix). Activation checkpointing keeps a checkpointed block's input only;
  its activations come back one block at a time in the backward.

Not included: DeepSpeed's communication buckets, the CUDA context, allocator fragmentation and the
transient buffers of the backward. The activations alone run 20-30 % under what is measured: at context 1024 on a CPU (nGPT, 8 layers,
d 64, batch 4, fp32) the activations came to 285 MiB estimated against 347 MiB of RSS measured by
bench/sequence_parallel.py. check_state_fits's lower bound (state + activations) sits further below: a whole
training step's peak RSS was 1.3-2.5 times it (docs/benchmarks.md, "The startup memory check against the measured
peak"; logits, DeepSpeed's buffers and the backward's transients come on top).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, cast

import torch
from torch import nn

from ngpt_ds.model import ModelConfig, build_model
from ngpt_ds.model.blocks import CausalSelfAttention
from ngpt_ds.model.lm import CausalLM

_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    """Parameters of the whole model."""
    weights: int
    gradients: int
    optimizer: int
    activations: int
    """Bytes this rank keeps for the backward of one micro-batch (checkpointed blocks: their inputs)."""
    recompute: int
    """Bytes of the largest checkpointed block's activations, rebuilt during the backward (0: none)."""
    optimizer_on_cpu: bool

    @property
    def device_total(self) -> int:
        optimizer = 0 if self.optimizer_on_cpu else self.optimizer
        return self.weights + self.gradients + optimizer + self.activations + self.recompute

    def describe(self) -> list[str]:
        gib = 2.0**30
        where = " (on the CPU: ZeRO-Offload)" if self.optimizer_on_cpu else ""
        return [
            f"parameters: {self.parameters / 1e6:.1f}M",
            f"weights {self.weights / gib:.2f} GiB | gradients {self.gradients / gib:.2f} GiB | optimizer state "
            f"{self.optimizer / gib:.2f} GiB{where}",
            f"activations kept for the backward {self.activations / gib:.2f} GiB"
            + (f" + {self.recompute / gib:.2f} GiB recomputed per checkpointed block" if self.recompute else ""),
            f"total on the device ~{self.device_total / gib:.2f} GiB per rank (a lower bound: a training step's peak "
            f"measured {MEASURED_PEAK_OVER_BOUND} times it, docs/benchmarks.md)",
        ]


class _FusedAttentionResidue(torch.autograd.Function):
    """Stands in for a fused attention kernel: keeps what flash attention keeps for its backward."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(q)
        lse = q.new_empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return grad, grad, grad


def _count_activations(model: CausalLM, tokens: torch.Tensor) -> tuple[int, list[int], list[int]]:
    """(bytes kept outside blocks, bytes kept per block, bytes of each block's input) of one forward."""
    params = {id(p) for p in model.parameters()}
    seen: set[int] = set()
    keep: list[torch.Tensor] = []  # ids stay unique while the tensors live
    current: list[int | None] = [None]
    outside, per_block, inputs = [0], [0] * len(model.blocks), [0] * len(model.blocks)

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if id(base) not in params and id(base) not in seen:
            seen.add(id(base))
            keep.append(base)
            size = base.numel() * base.element_size()
            if current[0] is None:
                outside[0] += size
            else:
                per_block[current[0]] += size
        return t

    handles = []
    for index, block in enumerate(model.blocks):

        def enter(module: nn.Module, args: tuple, index: int = index) -> None:
            current[0] = index
            inputs[index] = args[0].numel() * args[0].element_size()

        def leave(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            current[0] = None

        handles += [block.register_forward_pre_hook(enter), block.register_forward_hook(leave)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(tokens, tokens)
    finally:
        for handle in handles:
            handle.remove()
    return outside[0], per_block, inputs


def estimate_memory(
    config: ModelConfig,
    *,
    micro_batch: int,
    precision: str,
    zero_stage: int,
    zero_ranks: int,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    sequence_parallel: int = 1,
    checkpoint_every: int = 0,
    optimizer_on_cpu: bool = False,
) -> MemoryEstimate:
    """Per-rank memory of training `config` (module docstring: what is counted and how)."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    with torch.device("meta"):
        model = build_model(config).to(dtype)
    for module in model.modules():
        if isinstance(module, CausalSelfAttention):
            cast(Any, module).attend = _FusedAttentionResidue.apply  # replaces a method: beyond mypy
    n = sum(p.numel() for p in model.parameters())
    cut = tensor_parallel * pipeline_parallel
    width = _BYTES[precision]
    weights = n * width // cut
    gradients = n * width // cut
    optimizer = n * ((0 if precision == "fp32" and zero_stage == 0 else 4) + 8) // cut
    if zero_stage >= 1:
        optimizer //= zero_ranks
    if zero_stage >= 2:
        gradients //= zero_ranks
    if zero_stage >= 3:
        weights //= zero_ranks

    positions = config.seq_len // sequence_parallel
    tokens = torch.zeros(micro_batch, positions, dtype=torch.long, device="meta")
    outside, per_block, inputs = _count_activations(model, tokens)
    kept, recompute = outside, 0
    for index, size in enumerate(per_block):
        if checkpoint_every and index % checkpoint_every == 0:
            kept += inputs[index]
            recompute = max(recompute, size)
        else:
            kept += size
    # Tensor parallelism splits the blocks' activations over heads and channels (roughly), pipeline
    # stages hold their share of the blocks (the first and last stage also the embedding and head).
    activations = kept // tensor_parallel // pipeline_parallel
    return MemoryEstimate(
        parameters=n,
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        activations=activations,
        recompute=recompute // tensor_parallel,
        optimizer_on_cpu=optimizer_on_cpu,
    )


STATE_BYTES_PER_PARAMETER = 16
"""Training state per parameter at the least, in every precision: fp32 weights, gradients and Adam's two moments
(4 + 4 + 8), or bf16 weights and gradients, the fp32 master and the moments (2 + 2 + 4 + 8)."""


def parameters_at_least(config: ModelConfig) -> int:
    """A lower bound on the model's parameters from its shape alone, with no model built: every block's matrices
    (4 d^2 for q, k, v, o and 3 d x mlp_width for SwiGLU) and the two vocabulary matrices, the input embedding and
    the output head, which neither nGPT nor the GPT baseline ties (ngpt_ds/model/ngpt.py, gpt.py). One was counted:
    a 4-layer d 1024 model of vocabulary 32768 was 100.7M parameters to the check and 134.3M built
    (docs/benchmarks.md, "The startup memory check against the measured peak")."""
    d = config.n_embd
    return config.n_layer * (4 * d * d + 3 * d * config.mlp_width) + 2 * (config.vocab_size or 0) * d


def state_bytes_per_parameter(precision: str, zero_stage: int, zero_ranks: int) -> float:
    """Training-state bytes one rank keeps per parameter of its model shard, as estimate_memory counts them: the
    weights and gradients in the run's precision and the optimizer state (Adam's two moments, and an fp32 master
    except in fp32 at ZeRO 0), each divided over the ZeRO ranks from the stage that partitions it (1: the optimizer
    state, 2: the gradients too, 3: the weights too). Over one rank 16 (STATE_BYTES_PER_PARAMETER), or 20 in fp32
    at ZeRO 1-3, whose optimizer keeps an fp32 copy of the fp32 weights."""
    width = _BYTES[precision]
    optimizer = (0 if precision == "fp32" and zero_stage == 0 else 4) + 8
    ranks = max(zero_ranks, 1)
    return (
        width / (ranks if zero_stage >= 3 else 1)
        + width / (ranks if zero_stage >= 2 else 1)
        + optimizer / (ranks if zero_stage >= 1 else 1)
    )


def check_state_fits(
    config: ModelConfig,
    *,
    world_size: int,
    local_world_size: int,
    node_bytes: int,
    source: str,
    zero_stage: int = 3,
    precision: str = "bf16",
    model_parallel: int = 1,
    activations: int = 0,
    pipeline_parallel: int = 1,
    available: int | None = None,
    process_available: int | None = None,
) -> str | None:
    """Raise NgptConfigError when the model's training state alone, split as this run's ZeRO stage, tensor and
    pipeline parallelism (`model_parallel`: their product) split it, exceeds all the memory of this node (RAM and
    device memory): a typo such as n_embd 1048576 otherwise ended in "can't allocate 13194139533312 bytes" inside the
    model's construction, and n_layer 1000000 spent minutes building blocks first. A lower bound: activations, buffers
    and the uneven splits come on top, so a run that passes may still not fit (the dry run estimates it).

    The defaults (ZeRO 3, bf16, no model parallelism) give the finest split there is: 16 bytes per parameter over
    every rank of the job. Checked against that alone, a 1B-parameter model at ZeRO 0 on one node's 2 ranks passed
    (15.8 GB of a 23.5 GiB node) while each rank keeps its own 15.8 GB: the ranks built the model for a minute and
    more, then ran out of memory (a traceback, or the OOM killer).

    `pipeline_parallel` (part of `model_parallel`): a bf16 pipeline at ZeRO 0 trains with DeepSpeed's
    BF16_Optimizer, which splits the fp32 master and Adam's moments over the data-parallel ranks as ZeRO 1 does;
    counted whole, a run that fits at 2 or more data-parallel ranks could be refused.

    `activations`: bytes one rank keeps for the backward (activations_at_least); with them a long context that
    cannot fit is refused too (the state alone passed it, and the OOM killer ended the run at its first step). A
    lower bound, so it refuses only when even that does not fit; returns a one-line warning when it is within
    a factor ACTIVATION_HEADROOM of the node (a step's peak measured 1.3-2.5 times the bound), else None.

    `available`: the memory free on this node now (node_memory_available: MemAvailable, or less under a cgroup's limit),
    which other processes may hold part of. Below the need it is a warning, not a refusal: that memory may be
    freed before the run reaches its peak, but an operator who started a second job on a busy node learns it here,
    not from the OOM killer at the first step.

    `process_available`: what this rank's process may still map under its own address-space limit (`ulimit -v`;
    saved_weights.address_space_headroom). Each rank has its own, so it is set against one rank's need; it was
    part of `available`, set against all local ranks' need: 2 ranks of 0.5 GiB under a 0.8 GiB limit each were
    warned that other processes held the node's memory. A limit below even one rank's lower bound is a refusal:
    its allocations fail however much the node has free."""
    from ngpt_ds.errors import NgptConfigError

    parameters = parameters_at_least(config)
    gib = 2.0**30
    sizes = (
        f"model config ({source}): n_layer {config.n_layer}, n_embd {config.n_embd}, mlp width {config.mlp_width} "
        f"and vocabulary {config.vocab_size} make at least {parameters / 1e9:,.1f}B parameters; training them takes "
        f"{STATE_BYTES_PER_PARAMETER} bytes each (weights, gradients, fp32 master, Adam's moments)"
    )
    finest = STATE_BYTES_PER_PARAMETER * parameters * local_world_size / max(world_size, 1)
    if finest > node_bytes:
        raise NgptConfigError(
            f"{sizes}, at least {finest / gib:,.0f} GiB on this node's {local_world_size} rank(s) of {world_size}, "
            f"but the node has {node_bytes / gib:,.0f} GiB of memory in all. Check the model's sizes, or spread the "
            "run over more nodes (ZeRO 3)"
        )
    model_parallel = max(model_parallel, 1)
    counted_stage = 1 if zero_stage == 0 and precision == "bf16" and pipeline_parallel > 1 else zero_stage
    per_parameter = state_bytes_per_parameter(precision, counted_stage, max(world_size // model_parallel, 1))
    per_rank = per_parameter * parameters / model_parallel
    if per_rank * local_world_size > node_bytes:
        cut = f" of its 1/{model_parallel} of the model" if model_parallel > 1 else ""
        fix = (  # DeepSpeed's pipeline engine stops on ZeRO 2 and 3
            "A pipeline trains at ZeRO 0 or 1 only: spread it over more ranks and nodes (train.pipeline_parallel_size, "
            "more data-parallel ranks), or check the model's sizes"
            if pipeline_parallel > 1
            else 'Set "zero_optimization": {"stage": 3} in the DeepSpeed JSON (which splits it over all '
            f"{world_size} ranks: at least {finest / gib:,.0f} GiB here), or check the model's sizes"
        )
        raise NgptConfigError(
            f"{sizes}; at ZeRO stage {zero_stage} in {precision} each rank keeps {per_parameter:g} bytes per "
            f"parameter{cut}, at least {per_rank / gib:,.1f} GiB per rank and {per_rank * local_world_size / gib:,.0f} "
            f"GiB on this node's {local_world_size} rank(s) of {world_size}, but the node has {node_bytes / gib:,.0f} "
            f"GiB of memory in all. {fix}"
        )
    need = (per_rank + activations) * local_world_size
    figures = (
        f"model config ({source}): training state {per_rank / gib:,.2f} GiB + activations {activations / gib:,.2f} "
        f"GiB per rank (a lower bound), {need / gib:,.2f} GiB on this node's {local_world_size} rank(s), "
        f"available {node_bytes / gib:,.2f} GiB"
    )
    fixes = (
        "a smaller micro batch with more gradient accumulation, activation checkpointing (train.checkpoint_every), "
        "sequence parallelism (train.sequence_parallel_size), or ZeRO 3"
    )
    # The refusal first: MemAvailable is known on every Linux node and never above its total, so the warning below,
    # checked first, returned for every run that cannot fit, and the OOM killer ended it at its first step.
    if activations and need > node_bytes:
        raise NgptConfigError(f"{figures}: it cannot fit. Use {fixes}")
    if activations and process_available is not None and per_rank + activations > process_available:
        raise NgptConfigError(
            f"model config ({source}): training state {per_rank / gib:,.2f} GiB + activations {activations / gib:,.2f} "
            f"GiB per rank (a lower bound), but this rank's process may map only {process_available / gib:,.2f} GiB "
            "more under its address-space limit (`ulimit -v`): its allocations would fail. Raise the limit (`ulimit "
            f"-v unlimited`, or Slurm's --propagate / the job's limits) or use {fixes}"
        )
    if available is not None and need > available:
        return (
            f"warning: model config ({source}): training state {per_rank / gib:,.2f} GiB + activations "
            f"{activations / gib:,.2f} GiB per rank (a lower bound) need {need / gib:,.2f} GiB on this node's "
            f"{local_world_size} rank(s), and {available / gib:,.2f} GiB of its {node_bytes / gib:,.2f} GiB is "
            "available now (MemAvailable, or its cgroup's limit less its use): other processes hold the rest. Stop "
            "them or wait for the memory, or the run may be ended by the out-of-memory killer at its first steps"
        )
    if activations and need * ACTIVATION_HEADROOM > node_bytes:
        return (
            f"warning: {figures}: a training step's peak measured {MEASURED_PEAK_OVER_BOUND} times this lower bound, "
            f"so it may run out of memory; if so use {fixes}"
        )
    return None


ACTIVATION_HEADROOM = 2.0
"""A run whose lower bound times this exceeds the node is warned. A whole training step's peak RSS measured 1.3-2.5
times the bound (docs/benchmarks.md, "The startup memory check against the measured peak"; the small shape's fixed
costs give the top of that range). It was 1.3, from the activations' 20-30 %: runs between 1.3 and 2.5 times the
bound got no word and could meet the OOM killer."""
MEASURED_PEAK_OVER_BOUND = "1.3-2.5"
"""The range of that measurement, as the messages quote it."""


def activations_at_least(
    config: ModelConfig,
    *,
    micro_batch: int,
    precision: str,
    sequence_parallel: int = 1,
    checkpoint_every: int = 0,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
) -> int:
    """Bytes one rank keeps for the backward, kept plus recomputed, as estimate_memory counts them
    (activations + recompute), measured on a one-block copy of the model on `meta` and scaled to n_layer
    (the blocks after the first keep the same), measured on a two-block copy of the model on `meta` and scaled
    to n_layer, so the startup check costs two blocks' forward, not the whole model's (the first block differs:
    a tensor a block saves and the next block saves again is counted once, in the first)."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    with torch.device("meta"):
        model = build_model(replace(config, n_layer=min(config.n_layer, 2))).to(dtype)
    for module in model.modules():
        if isinstance(module, CausalSelfAttention):
            cast(Any, module).attend = _FusedAttentionResidue.apply  # replaces a method: beyond mypy
    tokens = torch.zeros(micro_batch, config.seq_len // sequence_parallel, dtype=torch.long, device="meta")
    outside, per_block, inputs = _count_activations(model, tokens)
    kept, recompute = outside, 0
    for index in range(config.n_layer):
        size, block_input = per_block[min(index, 1)], inputs[min(index, 1)]
        if checkpoint_every and index % checkpoint_every == 0:
            kept += block_input
            recompute = max(recompute, size)
        else:
            kept += size
    return kept // tensor_parallel // pipeline_parallel + recompute // tensor_parallel


def node_memory_available(accelerator: Any) -> int | None:
    """Memory free on this node now, in the terms of check_state_fits's node total: the host's (the least of
    /proc/meminfo's MemAvailable and a cgroup's limit less its use, as ngpt_ds.model.saved_weights.node_memory_headroom
    reads them; not `ulimit -v`, which bounds each process on its own) plus, on GPUs, each visible device's free
    memory. None where the host's is unknown (not Linux)."""
    from ngpt_ds.model.saved_weights import node_memory_headroom

    host = node_memory_headroom()
    if host is None or accelerator.device_name() == "cpu":
        return host
    try:
        return host + sum(int(accelerator.available_memory(i)) for i in range(accelerator.device_count()))
    except (RuntimeError, OSError, AttributeError):  # no driver query here: the node total alone is checked
        return None


def process_memory_available() -> int | None:
    """What this process may still map under its own address-space limit (`ulimit -v`), for check_state_fits's
    per-rank comparison; None where unlimited or unknown."""
    from ngpt_ds.model.saved_weights import address_space_headroom

    return address_space_headroom()
