"""DeepSpeed's on-disk checkpoint format: the one place ngpt_ds reads what DeepSpeed wrote.

A trainer checkpoint `<out>/checkpoints/step_N/` (folder layout, COMPLETE marker and manifest:
ngpt_ds.train.checkpoint) holds DeepSpeed's files next to the trainer's `config.yaml`. Reading
them without starting DeepSpeed (inference, export, a resume that needs to know how the
checkpoint was cut) goes through this module; every file is unpickled by ngpt_ds.safe_load
(tensors, plain data and an allow-list only, DeepSpeed's own reads in `zero_to_fp32` included).

What is read (checked against deepspeed 0.19.3, 0.19.6 and 0.19.8; the range setup.py allows is
>=0.19.6,<0.20; a newer DeepSpeed that renames a file or a field needs this header revisited):

  mp_rank_XX_model_states.pt            ZeRO 0-2, one per tensor-parallel rank XX (per pipeline
                                        stage XX with pipeline parallelism; `module` is then None)
  layer_LL-model_states.pt              pipeline parallelism: the state dict of layer LL
  zero_pp_rank_R_mp_rank_XX_model_states.pt
                                        ZeRO 3, one per data-parallel rank R (R = 0 is read here)
      module                            the module's state dict (whole weights at ZeRO 0 in the
                                        working precision; at ZeRO 3 placeholders)
      dp_world_size, mp_world_size      the data- and tensor-parallel sizes it was saved with
      ds_config                         the DeepSpeed config (zero_optimization.stage)
      ds_version                        the DeepSpeed release that wrote it
      optimizer.fp32_groups             ZeRO 0 in bf16/fp16 only: FP16_UnfusedOptimizer's fp32
                                        master copies, one list per parameter group, in the
                                        order of the groups the trainer gave the optimizer
  [bf16_]zero_pp_rank_R_mp_rank_XX_optim_states.pt
                                        ZeRO 1-3 shards of the fp32 master weights and optimizer
                                        state; read only by DeepSpeed's own
                                        `deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint`
                                        (optimizer_state_dict: zero_stage, partition_count,
                                        single_partition_of_fp32_groups or fp32_flat_groups; and the
                                        model states' param_shapes, buffer_names, frozen_param_*)

`zero_to_fp32` consolidates the shards of model-parallel rank 0 only; a tensor-parallel
checkpoint is consolidated one model-parallel rank at a time through a temporary folder of
links that names that rank's files as rank 0's (`consolidate_zero_rank`), and the caller merges
the ranks (ngpt_ds.parallel.merge_tensor_parallel).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import reprlib
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ngpt_ds import safe_load
from ngpt_ds.errors import NgptConfigError

PIPELINE_LAYER_FILES = "layer_*-model_states.pt"
"""A pipeline checkpoint's weights: one file per layer of the PipelineModule (written by its stage)."""

_LAYER_FILE = re.compile(r"layer_([0-9]+)-model_states\.pt")
"""A layer file's name as DeepSpeed's PipelineModule writes it (layer_{index:02d}-model_states.pt): the index."""

_MP_RANK = re.compile(r"mp_rank_(\d+)_model_states\.pt$")


def model_states_file(checkpoint: Path, zero_stage: int, mp_rank: int = 0) -> Path:
    """The model-states file of model-parallel rank `mp_rank` (data-parallel rank 0 at ZeRO 3)."""
    if zero_stage == 3:
        return checkpoint / f"zero_pp_rank_0_mp_rank_{mp_rank:02d}_model_states.pt"
    return checkpoint / f"mp_rank_{mp_rank:02d}_model_states.pt"


def model_parallel_ranks(checkpoint: Path) -> int:
    """How many tensor-parallel ranks wrote model states into `checkpoint` (1 without tensor parallelism)."""
    ranks = {m.group(1) for p in checkpoint.glob("*mp_rank_*_model_states.pt") if (m := _MP_RANK.search(p.name))}
    return max(1, len(ranks))


def zero_stage_of(ds_config: dict[str, Any] | None, source: str = "the saved DeepSpeed config") -> int:
    """zero_optimization.stage of a DeepSpeed config dict (0 when absent). Anything but 0-3 is an
    NgptConfigError naming `source` (the trainer checks the stage before it saves a config)."""
    zero = (ds_config or {}).get("zero_optimization") or {}
    stage = zero.get("stage", 0) if isinstance(zero, dict) else 0
    if isinstance(stage, bool) or not isinstance(stage, (int, float)) or stage not in (0, 1, 2, 3):
        raise NgptConfigError(
            f"{source}: zero_optimization.stage = {reprlib.repr(stage)[:80]} is not a ZeRO stage (0, 1, 2 or 3); "
            "the file was not written by the ngpt_ds trainer or was altered"
        )
    return int(stage)


def saved_zero_stage(checkpoint: Path) -> int:
    """The ZeRO stage a checkpoint was written with, from its file names alone (no file is read):
    per-rank model states mean ZeRO 3; optimizer shards without them ZeRO 1 or 2 (reported as 1,
    read `ds_config` from the model states for the exact stage); neither ZeRO 0."""
    if any(checkpoint.glob("zero_pp_rank_*_mp_rank_*_model_states.pt")):
        return 3
    if any(checkpoint.glob("*zero_pp_rank_*_mp_rank_*_optim_states.pt")):
        return 1
    return 0


def read(path: Path) -> dict[str, Any]:
    """One checkpoint file, unpickled safely on the CPU (memory-mapped). A missing, truncated or
    foreign file is an NgptConfigError naming it; a refused type is safe_load's UnsafeCheckpointError."""
    if not path.is_file():
        raise NgptConfigError(f"{path} is missing: the checkpoint {path.parent} is incomplete or damaged")
    try:
        states = safe_load.load(path, map_location="cpu", mmap=True)
    except safe_load.UnsafeCheckpointError:
        raise
    except Exception as err:  # a truncated or foreign file: torch raises many types
        raise NgptConfigError(
            f"{path} could not be read ({type(err).__name__}: {err}); the checkpoint is damaged"
        ) from None
    if not isinstance(states, dict):
        raise NgptConfigError(f"{path} holds a {type(states).__name__}, not the mapping DeepSpeed saves: {_ALTERED}")
    return states


_ALTERED = "the checkpoint is damaged, or was not written by the ngpt_ds trainer"


def _size(states: dict[str, Any], key: str, path: Path) -> int | None:
    """A parallel size DeepSpeed records (dp_world_size, mp_world_size): a positive int, or None when absent."""
    value = states.get(key)
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise NgptConfigError(f"{path}: {key} = {reprlib.repr(value)[:80]} is not a rank count: {_ALTERED}")
    return value


def _tensors(weights: Any, path: Path) -> dict[str, torch.Tensor]:
    """A state dict read from `path`: names to tensors, nothing else."""
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise NgptConfigError(f"{path} holds module weights that are not all tensors: {_ALTERED}")
    return weights


@dataclass
class SavedLayout:
    """How a checkpoint was cut, from its model-states file (ZeRO stage, data- and tensor-parallel
    sizes) and the DeepSpeed release that wrote it."""

    zero_stage: int
    data_parallel: int
    tensor_parallel: int
    ds_version: str | None
    pipeline_parallel: int = 1


def saved_layout(checkpoint: Path) -> SavedLayout:
    """The layout recorded in model-parallel rank 0's model states (one small file is read; the
    module weights in it are memory-mapped, not copied)."""
    stage = saved_zero_stage(checkpoint)
    path = model_states_file(checkpoint, stage)
    states = read(path)
    ds_config = states.get("ds_config")
    if stage != 0 and isinstance(ds_config, dict):
        # The config decides: at ZeRO 0 DeepSpeed's BF16_Optimizer (bf16 pipeline stages) writes
        # optimizer shards too, which the file names alone would read as ZeRO 1.
        stage = zero_stage_of(ds_config, f"{path} (ds_config)")
    model_parallel = _size(states, "mp_world_size", path) or model_parallel_ranks(checkpoint)
    # A pipeline checkpoint (one file per layer) counts its stages as model-parallel ranks; ngpt_ds never
    # combines pipeline and tensor parallelism (ngpt_ds.parallel.pipeline).
    stages = model_parallel if any(checkpoint.glob(PIPELINE_LAYER_FILES)) else 1
    return SavedLayout(
        zero_stage=stage,
        data_parallel=_size(states, "dp_world_size", path) or 1,
        tensor_parallel=model_parallel // stages,
        ds_version=states.get("ds_version"),
        pipeline_parallel=stages,
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DeepSpeed's consolidation prints progress lines and bars; keep them off the terminal, where
    generate.py streams text and evaluate.py prints its table."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


ZERO_TO_FP32_FILES = ("*_model_states.pt", "*_optim_states.pt")
"""What DeepSpeed's zero_to_fp32 reads in a checkpoint folder: every file these name, not only rank 0's."""


def check_zero_to_fp32_files(checkpoint: Path) -> None:
    """The zip layout of every file zero_to_fp32 will read (safe_load.check_layout: the zip's directory only),
    before it reads any: a crafted file among them (an extra zz_model_states.pt, a rank's optimizer states)
    is refused up front, naming it, not after the others were loaded. Each load under the guard checks again.
    An entry of such a name that is no file (a folder, which a checkpoint's manifest allows) is refused too."""
    for path in sorted({p for pattern in ZERO_TO_FP32_FILES for p in checkpoint.glob(pattern)}):
        if not path.is_file():  # a folder under such a name: an IsADirectoryError traceback from the open below
            what = "a folder" if path.is_dir() else "not a regular file"
            raise NgptConfigError(
                f"{path} is {what}, where DeepSpeed's zero_to_fp32 reads a checkpoint file: {_ALTERED}"
            )
        safe_load.check_layout(path)


def consolidate_zero(checkpoint: Path) -> dict[str, torch.Tensor]:
    """fp32 weights from the ZeRO 1/2/3 shards of model-parallel rank 0, by DeepSpeed's
    zero_to_fp32 (CPU, no process group)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        check_zero_to_fp32_files(checkpoint)
        with _quiet(), safe_load.deepspeed_loads_are_safe():
            return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
    except NgptConfigError:  # ours, naming the file (safe_load's refusals included): not "could not consolidate"
        raise
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, EOFError) as err:
        raise NgptConfigError(
            f"DeepSpeed could not consolidate the ZeRO shards in {checkpoint}: {err}. "
            "The checkpoint is incomplete or damaged; use another one"
        ) from None


def consolidate_zero_rank(checkpoint: Path, mp_rank: int) -> dict[str, torch.Tensor]:
    """fp32 weights of one tensor-parallel rank's ZeRO shards: zero_to_fp32 on a temporary view of
    the folder holding only that rank's files, named as rank 0's (zero_to_fp32 refuses a folder
    holding more than one rank's shards, rank 0's included)."""
    with tempfile.TemporaryDirectory() as tmp:
        view = Path(tmp) / checkpoint.name
        view.mkdir()
        for f in checkpoint.glob(f"*mp_rank_{mp_rank:02d}_*"):
            os.symlink(f.resolve(), view / f.name.replace(f"mp_rank_{mp_rank:02d}", "mp_rank_00"))
        return consolidate_zero(view)


def _consolidate_stage(checkpoint: Path, stage: int) -> dict[str, torch.Tensor]:
    """fp32 weights of one pipeline stage's ZeRO shards, as `consolidate_zero_rank`. A pipeline stage's
    model states hold `module: None` (its weights are in the layer files), which zero_to_fp32 reads for
    buffer names: the view gets a copy with an empty module (the model has no buffers)."""
    with tempfile.TemporaryDirectory() as tmp:
        view = Path(tmp) / checkpoint.name
        view.mkdir()
        for f in checkpoint.glob(f"*zero_pp_rank_*_mp_rank_{stage:02d}_optim_states.pt"):
            os.symlink(f.resolve(), view / f.name.replace(f"mp_rank_{stage:02d}", "mp_rank_00"))
        states = read(model_states_file(checkpoint, 1, stage))
        torch.save({**states, "module": {}}, view / model_states_file(view, 1).name)
        return consolidate_zero(view)


def _pipeline_weights(checkpoint: Path, zero_stage: int, *, stages: int, data_parallel: int) -> SavedWeights:
    """A pipeline checkpoint's weights under the model's own names: the fp32 masters of every stage's
    ZeRO 1 shards, or at ZeRO 0 the layer files' module weights (working precision)."""
    from ngpt_ds.parallel.pipeline import model_parameter_name

    if zero_stage == 0:
        weights, source = {}, f"pipeline x{stages}, module weights (ZeRO 0)"
        for layer, path in sorted(_layer_files(checkpoint).items()):
            weights.update({f"{layer}.{name}": t for name, t in _tensors(read(path), path).items()})
    else:
        weights = {name: t for mp in range(stages) for name, t in _consolidate_stage(checkpoint, mp).items()}
        source = f"pipeline x{stages}, fp32 master weights consolidated from ZeRO-{zero_stage} shards"
    weights = {model_parameter_name(name): t for name, t in weights.items()}
    return SavedWeights(
        weights=weights, source=source, data_parallel=data_parallel, tensor_parallel=1, pipeline_parallel=stages
    )


def _layer_files(checkpoint: Path) -> dict[int, Path]:
    """A pipeline checkpoint's layer files by layer index. A name without an index (layer_x-model_states.pt)
    stopped generate, evaluate and export with a ValueError traceback, and two names of one index (layer_1 and
    layer_01) loaded whichever sorted last: each is an NgptConfigError naming the file."""
    layers: dict[int, Path] = {}
    for path in sorted(checkpoint.glob(PIPELINE_LAYER_FILES)):
        found = _LAYER_FILE.fullmatch(path.name)
        if found is None:
            raise NgptConfigError(
                f"{path}: a pipeline checkpoint's layer files are named layer_<index>-model_states.pt (DeepSpeed's "
                f"PipelineModule), and this name has no layer index: {_ALTERED}"
            )
        layer = int(found.group(1))
        if layer in layers:
            raise NgptConfigError(
                f"{path}: layer {layer} has two files ({layers[layer].name} too); DeepSpeed's PipelineModule writes "
                f"one per layer: {_ALTERED}"
            )
        layers[layer] = path
    return layers


def module_weights(states: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The `module` state dict of a model-states file (ZeRO 0: whole weights)."""
    weights = states.get("module")
    if not isinstance(weights, dict):
        raise NgptConfigError(f"{path} holds no module weights: the checkpoint is damaged")
    return _tensors(weights, path)


def zero0_master_weights(
    states: dict[str, Any], group_names: Sequence[Sequence[str]]
) -> dict[str, torch.Tensor] | None:
    """ZeRO 0 in bf16/fp16: the fp32 master copies DeepSpeed saves beside the half-precision module
    weights (optimizer `fp32_groups`), named by `group_names` (the parameter names of each group the
    optimizer was given, in order). None when they are absent or do not map one to one onto the
    module weights (each must cast to them exactly, as the trainer keeps working copy = cast(master))."""
    optimizer = states.get("optimizer")
    groups = optimizer.get("fp32_groups") if isinstance(optimizer, dict) else None
    module = states.get("module") or {}
    if not groups or not isinstance(groups, list):
        return None
    if [len(g) for g in group_names] != [len(g) if isinstance(g, (list, tuple)) else -1 for g in groups]:
        return None
    master = {n: t for names, tensors in zip(group_names, groups) for n, t in zip(names, tensors)}
    for n, t in master.items():
        working = module.get(n)
        if (
            not isinstance(t, torch.Tensor)
            or working is None
            or tuple(t.shape) != tuple(working.shape)
            or not torch.equal(t.to(working.dtype), working)
        ):
            return None
    return master


@dataclass
class SavedWeights:
    """The best weights a checkpoint holds, and what they are."""

    weights: dict[str, torch.Tensor]
    source: str
    """e.g. 'fp32 master weights consolidated from ZeRO-2 shards of 2 rank(s)'."""
    data_parallel: int
    tensor_parallel: int
    pipeline_parallel: int = 1


def read_weights(
    checkpoint: Path,
    zero_stage: int,
    group_names: Sequence[Sequence[str]],
    merge_tensor_parallel: Callable[[list[dict[str, torch.Tensor]]], dict[str, torch.Tensor]],
) -> SavedWeights:
    """The fp32 master weights where the checkpoint holds them (ZeRO 1-3 shards; ZeRO 0 bf16/fp16
    masters that match `group_names`), else the module weights. A tensor-parallel checkpoint is read
    per model-parallel rank and the ranks joined by `merge_tensor_parallel`."""
    tp_size = model_parallel_ranks(checkpoint)
    states_file = model_states_file(checkpoint, zero_stage)
    states = read(states_file)
    world = _size(states, "dp_world_size", states_file) or 1
    if any(checkpoint.glob(PIPELINE_LAYER_FILES)):
        return _pipeline_weights(checkpoint, zero_stage, stages=tp_size, data_parallel=world)
    if tp_size > 1:
        if zero_stage == 0:
            shards = [
                module_weights(read(f), f) for f in (model_states_file(checkpoint, 0, mp) for mp in range(tp_size))
            ]
        else:
            shards = [consolidate_zero_rank(checkpoint, mp) for mp in range(tp_size)]
        weights = merge_tensor_parallel(shards)
        source = f"tensor-parallel x{tp_size}, " + ("module weights" if zero_stage == 0 else "fp32 master weights")
    elif zero_stage == 0:
        weights = module_weights(states, states_file)
        source = "module weights (ZeRO 0)"
        if any(t.dtype in (torch.bfloat16, torch.float16) for t in weights.values()):
            master = zero0_master_weights(states, group_names)
            if master is not None:
                weights, source = master, "fp32 master weights (ZeRO 0)"
    else:
        weights = consolidate_zero(checkpoint)
        source = f"fp32 master weights consolidated from ZeRO-{zero_stage} shards of {world} rank(s)"
    return SavedWeights(weights=weights, source=source, data_parallel=world, tensor_parallel=tp_size)
