"""The DeepSpeed releases ngpt_ds is tested with, checked at startup, and faults of them undone.

The hypersphere hook (ngpt_ds/train/sphere_masters.py) reads DeepSpeed's private optimizer
attributes, which change between minor releases: 0.16.0-0.19.2 have no
`DeepSpeedZeroOptimizer_Stage3._get_param_partition_rank` (it came with 0.19.3), so ZeRO 3
failed there with an AttributeError after the process group was up; 0.16.0 and 0.19.2 were
run to confirm it. 0.19.3-0.19.5 divide every gradient by gradient_accumulation_steps twice at
ZeRO 0-2: their engine divides the gradient arriving at each tensor the forward returns, and the
model returns the logits and the loss computed from them, so the loss's gradient is divided at
both (a forward returning the loss alone came out right; ZeRO 3 was right). With 2 accumulation
steps the gradient reaching the optimizer and the reported gradient norm were half the true ones
(0.111 against plain torch's 0.223, with or without tensor or sequence parallelism), so clipping
acted as if its threshold were multiplied by the accumulation steps. 0.19.6 divides the loss once
in `engine.backward` and skips the per-output division inside it; 0.19.3, 0.19.5, 0.19.6 and
0.19.7 were run to find the release. The range below is the one CI runs: the hypersphere,
sphere-guard, resume, precision and gradient-norm tests pass on its lowest release and on TESTED
(tests/run.sh runs them on both). The upper bound stops before the next minor release, whose
internals nobody has checked yet.

The faults undone here read, of DeepSpeed's private API (the same in 0.19.6 and 0.19.8):
`FP16_UnfusedOptimizer.optimizer`, `.fp16_groups` and `.step` (ZeRO 0 with bf16 or fp16), and
`BF16_Optimizer.get_grads_for_norm(for_clipping=)`, `.mpu` and `.fp32_groups_flat_partition`
(ZeRO 1 with bf16 and fp32 gradient accumulation). Their test is tests/test_gradient_norm_parallel.py.
`clip_pipeline_fp32_gradients` reads `PipelineEngine._take_model_step` (one call per `train_batch`, from
`_exec_optimizer_step`), `.clip_fp32_gradients()`, `.gradient_clipping()`, `.grid`
(`get_model_parallel_group`, the tensor-parallel rank through `utils.bwc.bwc_tensor_model_parallel_rank`),
`runtime.utils.is_model_parallel_parameter` and the parameters' `ds_pipe_replicated` (pipeline
runs at ZeRO 0 in fp32; the same in 0.19.6 and 0.19.8, read in both); its test is
tests/test_pipeline_grad_norm.py.

`check_deepspeed_version` reads the installed version from the package metadata, without
importing DeepSpeed, and runs before any process group exists, so a wrong version stops every
rank at once with the fix instead of an AttributeError deep in the first step, or wrong clipping.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import metadata
from typing import TYPE_CHECKING, Any

import torch
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from ngpt_ds.errors import NgptConfigError

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

LOWEST = "0.19.6"
"""The lowest supported release: tests/run.sh runs the DeepSpeed-sensitive tests on it too."""
SUPPORTED = f">={LOWEST},<0.20"
"""DeepSpeed releases the tests pass on (setup.py's requirement is this string)."""
TESTED = "0.19.8"
"""The release launch/setup.sh installs, and the one the DeepSpeed internals were read against."""
ALLOW_UNTESTED_ENV = "NGPT_DS_ALLOW_UNTESTED_DEEPSPEED"
"""Set to 1 to run on a release outside SUPPORTED anyway (a warning instead of an error)."""

_SCALES_GRADIENTS_TWICE = SpecifierSet(">=0.19.3,<0.19.6")
"""Releases that divide the gradients by gradient_accumulation_steps twice (see the module docstring)."""

_FIX = f"pip install 'deepspeed{SUPPORTED}' (launch/setup.sh installs deepspeed=={TESTED})"


def check_deepspeed_version(installed: str | None = None, *, warn: Callable[[str], object] = print) -> str:
    """Raise NgptConfigError unless the installed DeepSpeed is in SUPPORTED; return its version.

    `installed` overrides the package metadata (for tests). Pre-release and local builds of a
    supported release (0.19.9.dev0, 0.19.8+cu124) are accepted; 0.20 pre-releases are not.
    """
    if installed is None:
        try:
            installed = metadata.version("deepspeed")
        except metadata.PackageNotFoundError:
            raise NgptConfigError(
                f"DeepSpeed is not installed; ngpt_ds supports deepspeed{SUPPORTED}. Fix: {_FIX}"
            ) from None
    try:
        version: Version | None = Version(installed)
    except InvalidVersion:
        version = None
    if version is not None and SpecifierSet(SUPPORTED).contains(version, prereleases=True):
        return installed
    if version is not None and _SCALES_GRADIENTS_TWICE.contains(version, prereleases=True):
        why = (
            "DeepSpeed 0.19.3-0.19.5 divide the gradients by gradient_accumulation_steps twice at ZeRO 0-2, "
            "so the gradient norm and clipping are wrong"
        )
    else:
        why = "the hypersphere hook reads DeepSpeed internals that differ between releases"
    message = f"DeepSpeed {installed} is installed, but ngpt_ds supports deepspeed{SUPPORTED}: {why}"
    if os.environ.get(ALLOW_UNTESTED_ENV) == "1":
        warn(f"warning: {message}; running anyway because {ALLOW_UNTESTED_ENV}=1")
        return installed
    raise NgptConfigError(f"{message}. Fix: {_FIX}, or set {ALLOW_UNTESTED_ENV}=1 to try it anyway")


def drop_warmup_optimizer_state(engine: DeepSpeedEngine) -> None:
    """Undo the zero-gradient step DeepSpeed's ZeRO-0 bf16/fp16 optimizer takes at creation.

    `FP16_UnfusedOptimizer.__init__` (ZeRO 0 with bf16, or fp16) calls the torch optimizer's
    step() once on zero gradients to create its state. Adam's step count then starts at 1, its
    bias correction is off by one step, and the first real update is 0.73x the size it has in
    fp32 or under ZeRO 1-3 (beta1 0.9, beta2 0.95; tests/test_precision.py measures it). Dropping
    the state is exact: torch's Adam creates it afresh at the first real step, and a checkpoint
    load replaces it anyway. That step moved no weight: Adam's update of a zero gradient is 0,
    nGPT has no weight decay, and GPT's decay is scaled by the LR its warmup holds at 0 then
    (with train.warmup_steps 0 the GPT matrices shrink once by 1 - lr * weight_decay).
    """
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    if isinstance(engine.optimizer, FP16_UnfusedOptimizer):
        engine.optimizer.optimizer.state.clear()


def count_tensor_parallel_gradients(engine: DeepSpeedEngine) -> None:
    """Make ZeRO 0's bf16 optimizer count every tensor-parallel shard in the gradient norm.

    DeepSpeed's clipping norm (`runtime.utils.get_weight_norm`) counts a tensor on tensor-parallel
    ranks above 0 only if it carries `tensor_model_parallel` (ngpt_ds.parallel.layers.mark_sharded),
    so that replicated weights are counted once. `FP16_UnfusedOptimizer.step` (ZeRO 0 with bf16)
    passes it the parameters' *gradients*, which never carry the mark: on tensor-parallel ranks above
    0 every shard was left out. With tensor parallel 2 the norm came out 0.154 instead of 0.223
    (tests/test_gradient_norm_parallel.py), so `gradient_clipping` clipped less than asked and
    train/grad_norm was wrong. ZeRO 1-3 count the parameters and are right. Before each step, the
    gradients of the sharded parameters are given their parameter's mark (a bf16 gradient reaches
    the norm as the same tensor: `grad.to(param.dtype)` returns it unchanged).
    """
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    optimizer = engine.optimizer
    if not isinstance(optimizer, FP16_UnfusedOptimizer):
        return
    sharded = [p for group in optimizer.fp16_groups for p in group if getattr(p, "tensor_model_parallel", False)]
    if not sharded:
        return
    step = optimizer.step

    def step_counting_shards(*args, **kwargs):
        for param in sharded:
            if param.grad is not None:
                param.grad.tensor_model_parallel = True
        return step(*args, **kwargs)

    optimizer.step = step_counting_shards


def count_sequence_parallel_gradients(engine: DeepSpeedEngine) -> None:
    """Let DeepSpeed's BF16_Optimizer (ZeRO 1, bf16, data_types.grad_accum_dtype fp32) step under sequence
    parallelism.

    Its gradient norm counts each gradient on one rank of the model-parallel group only: for the
    sequence-parallel mpu (ngpt_ds.parallel.sequence) that is sequence rank 0, where every rank of a
    sequence holds the same reduced gradients, and the squares are then summed over the sequence group.
    On the other sequence ranks the list of gradients to count is empty, and
    `runtime.utils.get_global_norm_of_tensors` stops there at the first step (torch.stack of an empty
    list: "stack expects a non-empty TensorList"), leaving rank 0 in the all-reduce. One zero added to
    their empty list adds nothing to the sum and lets the collective run.
    """
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    optimizer = engine.optimizer
    mpu = getattr(optimizer, "mpu", None)
    if not isinstance(optimizer, BF16_Optimizer) or not hasattr(mpu, "get_sequence_parallel_world_size"):
        return
    grads_for_norm = optimizer.get_grads_for_norm

    def grads_for_norm_never_empty(for_clipping: bool = False):
        found = grads_for_norm(for_clipping=for_clipping)
        if not for_clipping and not found[0]:
            found[0].append(torch.zeros(1, device=optimizer.fp32_groups_flat_partition[0].device))
        return found

    optimizer.get_grads_for_norm = grads_for_norm_never_empty


def clip_pipeline_fp32_gradients(engine: Any, wanted: Callable[[], bool]) -> Callable[[], torch.Tensor | None] | None:
    """Clip a pipeline's fp32 gradients by the norm over every stage, and keep that norm for train/grad_norm.

    DeepSpeed's PipelineEngine at ZeRO 0 in fp32 clips in `clip_fp32_gradients` (runtime.utils.clip_grad_norm_
    with the pipeline grid as mpu), which has two faults. It discards the norm (get_global_grad_norm() stays
    None), so such runs logged no train/grad_norm. And it counts a gradient only on the ranks of model-parallel
    rank 0 or when its parameter is marked tensor-parallel; the grid's model-parallel group is the whole
    pipeline, whose rank is the stage, so only stage 0's gradients were counted and every stage was clipped by
    stage 0's norm: with two stages of a tiny GPT whose global norm was 1.22 against a clip of 1.0, stage 0's
    part was 0.88 and nothing was clipped (tests/test_pipeline_grad_norm.py).

    Here, each optimizer step measures `pipeline_grad_norm` (DeepSpeed's own definition
    for its bf16 pipelines: every stage once, a tied parameter once) after the gradients are reduced and before
    the step, and `clip_fp32_gradients` clips by it with DeepSpeed's formula (clip / (norm + 1e-6), at most 1).
    With gradient_clipping 0 the norm is a pass over every gradient and an all-reduce only the log needs: it is
    measured when `wanted()` (the same on every rank) says the step is logged. Returns what gives the last
    step's norm (None when it was not measured); None for every other engine, which keeps a norm itself.
    """
    from deepspeed.runtime.pipe.engine import PipelineEngine

    if not isinstance(engine, PipelineEngine):
        return None
    if engine.zero_optimization() or engine.bfloat16_enabled() or engine.fp16_enabled():
        return None
    last: list[torch.Tensor | None] = [None]
    take_model_step = engine._take_model_step

    def take_model_step_measured(*args, **kwargs):
        measure = engine.gradient_clipping() > 0.0 or wanted()
        last[0] = pipeline_grad_norm(engine) if measure else None
        return take_model_step(*args, **kwargs)

    def clip_by_every_stage() -> None:
        norm = last[0]
        assert norm is not None, "DeepSpeed clips only with gradient_clipping > 0, when the step measured it"
        coefficient = torch.clamp(engine.gradient_clipping() / (norm + 1e-6), max=1.0)
        for param in engine.module.parameters():
            if param.grad is not None:
                param.grad.mul_(coefficient.to(param.grad.device))

    engine._take_model_step = take_model_step_measured
    engine.clip_fp32_gradients = clip_by_every_stage
    return lambda: last[0]


def pipeline_grad_norm(engine: Any) -> torch.Tensor:
    """The global gradient norm of a DeepSpeed PipelineEngine's reduced gradients, as DeepSpeed defines it for
    its bf16 pipelines (BF16_Optimizer.get_grads_for_norm, runtime.utils.get_global_norm_of_tensors): this
    stage's gradients, a tied parameter counted on its first stage only (the others carry
    `ds_pipe_replicated`), a replicated one on tensor-parallel rank 0 only, and the squares summed over the
    grid's model-parallel group (every stage and tensor-parallel rank of this data-parallel replica). The
    gradients are already averaged over the data-parallel replicas, so every replica gets the same norm.
    Collective over that group: every rank of it calls it at the same step (clip_pipeline_fp32_gradients)."""
    from deepspeed.runtime.utils import is_model_parallel_parameter
    from deepspeed.utils.bwc import bwc_tensor_model_parallel_rank

    from ngpt_ds.train.collectives import all_reduce_on

    grid, device = engine.grid, engine.device
    first_tensor_rank = bwc_tensor_model_parallel_rank(mpu=grid) == 0
    counted = [
        p.grad
        for p in engine.module.parameters()
        if p.grad is not None
        and not getattr(p, "ds_pipe_replicated", False)
        and (first_tensor_rank or is_model_parallel_parameter(p))
    ]
    squares = [g.detach().float().pow(2).sum().to(device) for g in counted]
    total = torch.stack(squares).sum() if squares else torch.zeros((), device=device)
    all_reduce_on(total, device, group=grid.get_model_parallel_group())
    return total.sqrt()


GRANULARITY_KEYS = ("stage3_module_granularity_threshold", "module_granularity_threshold")
"""The ZeRO 3 key (and its field name, which DeepSpeed's config also reads) that makes modules leaves."""


def _granularity(module: torch.nn.Module) -> tuple[int, int, int | None]:
    """(torch leaf modules, parameters, granularity) of `module` as DeepSpeed 0.19's
    `DeepSpeedZeRoOffload._get_granularity_recursively` counts them; granularity None: never a leaf."""
    if not any(True for _ in module.parameters()):
        return 0, 0, None
    params = sum(p.numel() for p in module.parameters(recurse=False))
    children = list(module.children())
    if not children:
        return 1, params, None
    layers = 0
    for child in children:
        child_layers, child_params, _ = _granularity(child)
        layers += child_layers
        params += child_params
    if type(module).__name__ in torch.nn.modules.container.__all__:
        return layers, params, None
    layers += 1
    return layers, params, params // layers if params <= 1e9 else None


def check_module_granularity(model: torch.nn.Module, ds_config: dict[str, Any]) -> None:
    """Refuse a ZeRO 3 `stage3_module_granularity_threshold` that makes the whole model one leaf module.

    DeepSpeed marks, top down, every module whose granularity (parameters / modules in it) is at most the
    threshold as a ZeRO 3 leaf. A threshold at or above the model's own granularity makes the model itself
    the leaf, and DeepSpeed 0.19.8 then stops every rank in the first backward ("RuntimeError: output with
    shape [1] doesn't match the broadcast shape [512, 32]": the embedding's gradient meets its released
    partition), with or without `stage3_use_all_reduce_for_fetch_params`. Smaller thresholds, which make the
    blocks or their attention and MLP leaves, train to the same losses. Call it on the model given to
    `deepspeed.initialize`, before it (every rank builds the same model, so all ranks stop together)."""
    zero = ds_config.get("zero_optimization")
    if not isinstance(zero, dict) or zero.get("stage") != 3:
        return
    for key in GRANULARITY_KEYS:
        threshold = zero.get(key)
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold <= 0:
            continue
        layers, params, granularity = _granularity(model)
        if granularity is not None and granularity <= threshold:
            raise NgptConfigError(
                f"DeepSpeed config zero_optimization.{key} = {threshold} makes the whole model one ZeRO 3 leaf "
                f"module (its granularity is {granularity}: {params} parameters / {layers} modules), and DeepSpeed "
                "stops the first backward with a RuntimeError there; set it below "
                f"{granularity} (smaller values make the blocks leaves) or remove it"
            )


def predivide_factor_problem(
    config: dict[str, Any], *, stage: int, averaging_ranks: int, sequence_parallel: int = 1
) -> str | None:
    """Why `gradient_predivide_factor` (other than 1) cannot run or gives wrong gradients here, or None.

    At ZeRO 2 and 3 with `reduce_scatter` (DeepSpeed's default; the trainer turns it off at ZeRO 3 under
    sequence parallelism) DeepSpeed 0.19.8 stops in deepspeed.initialize (AssertionError "gradient_predivide_factor
    != 1.0 is not yet supported"). Without it, a factor equal to the size of the group the gradients are averaged
    over (data x sequence ranks) makes DeepSpeed skip its post-scaling and divide wrongly: at ZeRO 3 by the
    factor and the group (2 CPU ranks, factor 2.0: gradient norm 0.0671 against 0.1342), at ZeRO 2 under
    sequence parallelism by the whole group instead of its data-parallel part (sequence-parallel size 2, factor
    2.0: 0.0861 against 0.1722, ZeRO 3 the same). ZeRO 1 and any other factor come out right."""
    factor = config.get("gradient_predivide_factor")
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor == 1:
        return None
    zero = config.get("zero_optimization")
    reduce_scatter = zero.get("reduce_scatter", True) if isinstance(zero, dict) else True
    if stage == 3 and sequence_parallel > 1:
        reduce_scatter = False  # parallel.sequence.deepspeed_config_for sets it so
    if stage in (2, 3) and reduce_scatter is not False:
        return (
            f"DeepSpeed does not support it at ZeRO stage {stage} with reduce_scatter (its default) and stops in "
            'deepspeed.initialize: set "zero_optimization": {"reduce_scatter": false}, or remove it'
        )
    if factor == averaging_ranks and (stage == 3 or (stage == 2 and sequence_parallel > 1)):
        return (
            f"equal to the {averaging_ranks} ranks the gradients are averaged over, DeepSpeed divides the "
            f"gradients wrongly at ZeRO {stage} without reduce_scatter"
            + (f" and train.sequence_parallel_size = {sequence_parallel}" if sequence_parallel > 1 else "")
            + " (every update too small); use another value, e.g. 1.0 (its default), or remove it"
        )
    return None
