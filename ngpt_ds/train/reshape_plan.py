"""Resume at another world size through DeepSpeed's universal checkpoints (README "Resuming at another
world size"): what a resume needs, decided before any engine.

A ZeRO checkpoint is cut into one optimizer shard per data-parallel rank, so DeepSpeed loads it only at
the data-parallel size it was saved with. DeepSpeed's `ds_to_universal` rewrites it as one file per
parameter (fp32 master, Adam's exp_avg and exp_avg_sq, step) that `"checkpoint": {"load_universal": true}`
re-partitions at any data-parallel size. The trainer does this by itself:

1. `plan` (here; every rank, once the ranks have agreed on the checkpoint, before any engine): compare the
   checkpoint's saved layout (ZeRO stage, data- and tensor-parallel sizes, read by
   ngpt_ds.deepspeed_files) with this run's. Equal, or only ZeRO 1 <-> 2 at the same sizes (one
   format), or ZeRO 0 (whole optimizer state in one file): nothing to do. A data-parallel change within
   ZeRO 1/2 or within ZeRO 3, or another ZeRO 3 sub_group_size (its optimizer state is saved by sub-group): a
   `Reshape`. Anything DeepSpeed cannot convert is refused here, before any compute, naming both setups.
2. `convert` (ngpt_ds.train.reshape_convert; collective, after the run lock): rank 0 runs the converter once
   into `checkpoints/step_N-universal/`.
3. The engine is built with load_universal, loads the folder, and the hypersphere hook rebuilds and
   renormalizes its view of the masters; `describe` is the one line the trainer prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ngpt_ds import deepspeed_files
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import checkpoint, preflight


@dataclass(frozen=True)
class Layout:
    """`data_parallel` is the number of ranks ZeRO cuts the optimizer state over, the count compared: with
    sequence parallelism the data x sequence ranks (DeepSpeed records it as `dp_world_size`).
    `sequence_parallel` only names the split in messages: a checkpoint does not depend on it."""

    zero_stage: int
    data_parallel: int
    tensor_parallel: int
    pipeline_parallel: int = 1
    sequence_parallel: int = 1
    sub_group_size: int | None = None
    """ZeRO 3's zero_optimization.sub_group_size (None: not ZeRO 3, or not a number): it cuts each rank's
    fp32 partition into the sub-groups its optimizer state is saved by."""

    def ranks(self) -> str:
        if self.sequence_parallel > 1:
            return (
                f"data-parallel size {self.data_parallel // self.sequence_parallel} x sequence-parallel size "
                f"{self.sequence_parallel}"
            )
        return f"data-parallel size {self.data_parallel}"

    def describe(self) -> str:
        return f"ZeRO stage {self.zero_stage}, {self.ranks()}, tensor-parallel size {self.tensor_parallel}" + (
            f", {self.pipeline_parallel} pipeline stages" if self.pipeline_parallel > 1 else ""
        )


@dataclass(frozen=True)
class Reshape:
    """A checkpoint to convert into `target` and load at another data-parallel size (or, at ZeRO 3, with
    another sub_group_size)."""

    source: Path
    saved: Layout
    current: Layout
    target: Path

    @property
    def step(self) -> int:
        return checkpoint.step_of(self.source.name)


def _family(stage: int) -> str:
    return {0: "ZeRO 0", 3: "ZeRO 3"}.get(stage, "ZeRO 1/2")


def _refuse(source: Path, saved: Layout, current: Layout, reason: str) -> NgptConfigError:
    return NgptConfigError(
        f"cannot resume {source.name} (saved at {saved.describe()}) at {current.describe()}: {reason}"
    )


WHY_NO_TENSOR_PARALLEL_CONVERSION = (
    "DeepSpeed's universal checkpoints merge and split tensor-parallel slices by Megatron name patterns, and the "
    "ngpt_ds tensor-parallel layout (ngpt_ds/parallel) is not declared to them, so a converted checkpoint could be "
    "silently wrong"
)


def _tensor_parallel_reason(saved: Layout, stages: str, stage: str) -> str:
    """Why a tensor-parallel change is refused, in the words of what was saved. A checkpoint saved at
    tensor-parallel size 1 was called "a tensor-parallel checkpoint", which it is not: it resumes at any
    data-parallel size, only its tensor-parallel size is fixed."""
    if saved.tensor_parallel == 1:
        where = (
            f" on {saved.pipeline_parallel * saved.data_parallel} rank(s)"
            if saved.pipeline_parallel > 1
            else " (at any data-parallel size)"
        )
        return (
            "a checkpoint saved without tensor parallelism (tensor-parallel size 1) resumes only at tensor-parallel "
            f"size 1. {WHY_NO_TENSOR_PARALLEL_CONVERSION}. Resume with train.tensor_parallel_size 1{stages}{where}"
            f"{stage}"
        )
    return (
        "a tensor-parallel checkpoint resumes only at the same tensor-parallel and data-parallel sizes. "
        f"{WHY_NO_TENSOR_PARALLEL_CONVERSION}. Resume with "
        f"train.tensor_parallel_size {saved.tensor_parallel}{stages} on "
        f"{saved.tensor_parallel * saved.pipeline_parallel * saved.data_parallel} rank(s){stage}"
    )


def plan(source: Path, current: Layout, out_dir: Path) -> Reshape | None:
    """What resuming `source` at `current` needs: None (DeepSpeed loads it as it is) or a Reshape.
    Raises NgptConfigError for what DeepSpeed cannot convert."""
    found = deepspeed_files.saved_layout(source)
    saved = Layout(
        found.zero_stage,
        found.data_parallel,
        found.tensor_parallel,
        found.pipeline_parallel,
        _saved_sequence_parallel(source),
        _saved_sub_group_size(source, found.zero_stage),
    )
    # A tensor- or pipeline-parallel checkpoint resumes only at its own layout, so its advice names all of it
    # (checked before the ZeRO stages: "any data-parallel size" was wrong for it, and so was "ZeRO 1/2", as a
    # pipeline runs at ZeRO 0 or 1 only).
    stage = "" if saved.zero_stage == current.zero_stage else f", at ZeRO stage {saved.zero_stage}"
    # The saved pipeline stages belong in the tensor-parallel advice too: without them it counted too few ranks,
    # and following it met the pipeline refusal next.
    stages = f" and train.pipeline_parallel_size {saved.pipeline_parallel}" if saved.pipeline_parallel > 1 else ""
    if saved.tensor_parallel != current.tensor_parallel or (
        saved.tensor_parallel > 1 and saved.data_parallel != current.data_parallel
    ):
        raise _refuse(source, saved, current, _tensor_parallel_reason(saved, stages, stage))
    if saved.pipeline_parallel != current.pipeline_parallel or (
        saved.pipeline_parallel > 1 and saved.data_parallel != current.data_parallel
    ):
        raise _refuse(
            source,
            saved,
            current,
            (
                "a checkpoint resumes with pipeline stages only at the pipeline and data-parallel sizes it was "
                "saved with: its optimizer state is cut by stage, and ngpt_ds does not convert its pipeline "
                "layout (DeepSpeed's universal conversion of it is untested here). Resume with "
                "train.pipeline_parallel_size "
                f"{saved.pipeline_parallel} on {saved.pipeline_parallel * saved.tensor_parallel * saved.data_parallel}"
                f" rank(s){stage}"
            ),
        )
    if _family(saved.zero_stage) != _family(current.zero_stage):
        exact = saved.tensor_parallel > 1 or saved.pipeline_parallel > 1
        where = (
            f"at ZeRO stage {saved.zero_stage} (the same layout otherwise)"
            if exact
            else f"with a {_family(saved.zero_stage)} DeepSpeed config (any data-parallel size there)"
        )
        raise _refuse(
            source,
            saved,
            current,
            (
                f"DeepSpeed loads a {_family(saved.zero_stage)} checkpoint only into {_family(saved.zero_stage)}, and "
                "its universal checkpoints convert between data-parallel sizes within ZeRO 1/2 or within ZeRO 3, not "
                f"from one to the other. Resume {where}, or start a new run with --resume none and another --out"
            ),
        )
    # ZeRO 3 saves each rank's optimizer state by sub-group (zero_optimization.sub_group_size elements of its
    # fp32 partition each); DeepSpeed's own load of a checkpoint cut into other sub-groups stopped, after the
    # engine was built, with torch's "ValueError: loaded state dict contains a parameter group that doesn't
    # match the size of optimizer's group". The universal checkpoint is kept per parameter: it loads into any.
    # Another size that cuts the same sub-groups (one per parameter group when every group is smaller than
    # both) loads as it is: converting a large checkpoint costs hours and twice its disk.
    other_sub_groups = saved.zero_stage == 3 and saved.sub_group_size != current.sub_group_size
    if other_sub_groups and saved.data_parallel == current.data_parallel:
        other_sub_groups = not _same_sub_groups_at(source, saved, current)
    if (saved.data_parallel == current.data_parallel and not other_sub_groups) or saved.zero_stage == 0:
        return None  # ZeRO 1 <-> 2 share one format; ZeRO 0 keeps the whole optimizer state in one file
    target = out_dir / checkpoint.CHECKPOINTS / checkpoint.universal_name(source.name)
    return Reshape(source=source, saved=saved, current=current, target=target)


def _saved_sequence_parallel(source: Path) -> int:
    """The sequence-parallel size the checkpoint's run used (its config.yaml), for messages only."""
    try:
        size = preflight.saved_run_config(source).get("train", {}).get("sequence_parallel_size", 1)
    except (NgptConfigError, AttributeError):
        return 1
    return size if isinstance(size, int) and size > 0 else 1


SUB_GROUP_SIZE_DEFAULT = 1_000_000_000
"""DeepSpeed 0.19's zero_optimization.sub_group_size when a config leaves it out."""


def sub_group_size_of(ds_config: object, zero_stage: int) -> int | None:
    """zero_optimization.sub_group_size of a ZeRO 3 config (DeepSpeed's default when left out); None for
    another stage or a value that is no number (DeepSpeed's own check names it)."""
    if zero_stage != 3:
        return None
    zero = ds_config.get("zero_optimization") if isinstance(ds_config, dict) else None
    value = (zero if isinstance(zero, dict) else {}).get("sub_group_size", SUB_GROUP_SIZE_DEFAULT)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value)


def _saved_sub_group_size(source: Path, zero_stage: int) -> int | None:
    """The sub_group_size of a ZeRO 3 checkpoint, from the DeepSpeed config saved in its model states."""
    if zero_stage != 3:
        return None
    states = deepspeed_files.read(deepspeed_files.model_states_file(source, zero_stage))
    return sub_group_size_of(states.get("ds_config"), zero_stage)


MAX_DIMS, MAX_DIM = 64, 2**63 - 1
"""What a parameter's saved shape may be: torch's most dimensions per tensor, each at most an int64."""


def saved_sub_groups(source: Path, data_parallel: int) -> list[list[int]] | None:
    """The elements each parameter holds in one rank's partition, per ZeRO 3 sub-group of the checkpoint, in
    DeepSpeed's order: its param_shapes lists one group per ZeRO 3 sub-group (the optimizer's fp16_groups), and
    a rank's partition of a parameter is ceil(numel / data_parallel) (padded to a multiple of the ranks).
    None when the model states hold no such list (DeepSpeed's own load then names the problem)."""
    states = deepspeed_files.read(deepspeed_files.model_states_file(source, 3))
    shapes = states.get("param_shapes") if isinstance(states, dict) else None
    if not isinstance(shapes, list) or not shapes:
        return None
    groups = []
    for group in shapes:
        if not isinstance(group, dict) or not group:
            return None
        numels = []
        for shape in group.values():
            # Dimensions as a tensor has them: a crafted shape of many huge integers kept math.prod (every
            # rank) multiplying for hours.
            if not isinstance(shape, (tuple, list)) or len(shape) > MAX_DIMS:
                return None
            if not all(isinstance(d, int) and 0 <= d <= MAX_DIM for d in shape):
                return None
            numels.append(-(-math.prod(shape) // data_parallel))
        groups.append(numels)
    return groups


def same_sub_groups(groups: list[list[int]], saved_size: int, current_size: int) -> bool:
    """Whether DeepSpeed cuts the parameters into the same sub-groups at current_size as it did at saved_size.
    `groups`: the partition elements of each parameter of each saved sub-group. DeepSpeed 0.19 (stage3
    _create_fp16_sub_groups) closes a sub-group once it holds current_size elements or at the end of its
    parameter group. So each saved sub-group stays whole if no parameter before its last reaches current_size,
    and it still closes at its end if it reaches current_size there, or if it held less than saved_size (then
    its parameter group's end closed it). A sub-group that reached saved_size but not current_size may run on
    into the next: counted as different (the parameter groups' ends are not saved)."""
    for numels in groups:
        before_last = 0
        for numel in numels[:-1]:
            before_last += numel
            if before_last >= current_size:
                return False
        total = before_last + numels[-1]
        if saved_size <= total < current_size:
            return False
    return True


def _same_sub_groups_at(source: Path, saved: Layout, current: Layout) -> bool:
    if saved.sub_group_size is None or current.sub_group_size is None:
        return False
    groups = saved_sub_groups(source, saved.data_parallel)
    return groups is not None and same_sub_groups(groups, saved.sub_group_size, current.sub_group_size)


def current_layout(
    ds_config: dict,
    world_size: int,
    tensor_parallel: int,
    other_parallel: int = 1,
    pipeline_parallel: int = 1,
    sequence_parallel: int = 1,
) -> Layout:
    """This run's layout: data parallelism is what the world size leaves after model parallelism.
    Sequence parallelism is not divided out: ZeRO partitions over the data x sequence ranks."""
    stage = deepspeed_files.zero_stage_of(ds_config)
    return Layout(
        stage,
        world_size // (tensor_parallel * other_parallel * pipeline_parallel),
        tensor_parallel,
        pipeline_parallel,
        sequence_parallel,
        sub_group_size_of(ds_config, stage),
    )


def describe(reshape: Reshape, reused: bool, renormalized: bool) -> str:
    """The one line the trainer prints."""
    how = (
        "reused the universal checkpoint {t} converted from it earlier"
        if reused
        else "converted it once into the universal checkpoint {t}"
    ).format(t=reshape.target)
    sphere = " and renormalized the sphere matrices" if renormalized else ""
    saved, current = reshape.saved, reshape.current
    if saved.data_parallel == current.data_parallel:  # only the ZeRO 3 sub-groups differ (plan)
        return (
            f"resuming step {reshape.step} saved with zero_optimization.sub_group_size {saved.sub_group_size} "
            f"at sub_group_size {current.sub_group_size} ({current.ranks()}, ZeRO 3): {how}, loaded it{sphere}"
        )
    return (
        f"resuming step {reshape.step} saved at {saved.ranks()} on "
        f"{current.ranks()} (ZeRO {current.zero_stage}): {how}, "
        f"loaded it{sphere}"
    )
