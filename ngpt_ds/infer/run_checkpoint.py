"""Find and read a checkpoint the trainer wrote (`<out>/checkpoints/step_N/`), without DeepSpeed's engine.

The folder layout and its COMPLETE manifest are the trainer's (ngpt_ds.train.checkpoint; a damaged
newest checkpoint is skipped as `--resume auto` skips it); the run config is the `config.yaml` the
trainer saves with every checkpoint; the DeepSpeed files (any ZeRO stage, tensor-parallel ranks
merged) are read by ngpt_ds.deepspeed_files, the one module that knows their layout.
"""

from __future__ import annotations

import contextlib
import os
import reprlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ngpt_ds import deepspeed_files, log, yaml_safe
from ngpt_ds.errors import UNPARSABLE, NgptConfigError
from ngpt_ds.infer.export_config import read_config_json
from ngpt_ds.infer.export_layout import CONFIG_FILE, EXPORT_FORMAT, WEIGHTS_FILE, is_export
from ngpt_ds.model import CausalLM
from ngpt_ds.model.config import MAX_CONFIG_FILE_BYTES, unreadable
from ngpt_ds.train import checkpoint as ckpt_layout
from ngpt_ds.train.checkpoint_layout import RETENTION, newer_complete
from ngpt_ds.train.resume import newest_intact

_log = log.get(__name__)

COMPLETE = ckpt_layout.COMPLETE  # the trainer's marker and manifest, written last


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint (step_N with COMPLETE), a run's checkpoints/ folder or a run directory -> the
    newest complete checkpoint directory, verified against its manifest. A partial or damaged
    checkpoint given by name is a clear error; in a folder, a damaged newest one is skipped with a
    warning (as the trainer's --resume auto does). The layout is the trainer's (ngpt_ds.train.checkpoint)."""
    path = Path(path)
    if not path.exists():
        removed = removed_checkpoint(path)
        if removed is not None:
            raise NgptConfigError(removed)
        raise NgptConfigError(
            f"{path} does not exist. Give an exported model folder, a checkpoint directory "
            "(<out>/checkpoints/step_N) or a training run's --out directory"
        )
    if ckpt_layout.is_step_dir(path):
        if (path / COMPLETE).is_file():
            problem = ckpt_layout.verify(path)
            if problem is not None:
                raise NgptConfigError(f"{path} is damaged: {problem}. Use another checkpoint")
            if ckpt_layout.is_legacy(path):
                _log.warning(ckpt_layout.legacy_warning(path))
            return path
        others = [d.name for d in ckpt_layout.complete_checkpoints(path.parent)]
        hint = f"; complete checkpoints next to it: {', '.join(others)}" if others else ""
        raise NgptConfigError(
            f"{path} is a partial checkpoint: it has no {COMPLETE} marker (the save was "
            f"interrupted or is still running){hint}"
        )
    for folder in (path, path / ckpt_layout.CHECKPOINTS):
        steps = ckpt_layout.step_dirs(folder)
        if ckpt_layout.complete_checkpoints(folder):
            newest = newest_intact(folder, warn=_log.warning)
            assert newest is not None  # None only without complete checkpoints (all damaged: it raises)
            return newest
        if steps:
            raise NgptConfigError(
                f"{folder} holds no complete checkpoint: {', '.join(d.name for d in steps)} "
                f"lack the {COMPLETE} marker (interrupted saves)"
            )
    if is_export(path):  # load() takes exports; export.py, which reads checkpoints, came here with one
        raise NgptConfigError(
            f"{path} is an exported model, and export.py reads a checkpoint (step_N with COMPLETE) or a training "
            f"run's folder: export from the checkpoint it was made from ({_recorded_checkpoint(path)})"
        )
    incomplete = _incomplete_export(path)
    if incomplete is not None:
        raise NgptConfigError(incomplete)
    raise NgptConfigError(
        f"{path} is neither an exported model ({CONFIG_FILE} + {WEIGHTS_FILE}) nor a checkpoint "
        "directory (step_N with COMPLETE) nor a training run (checkpoints/step_N)"
    )


def removed_checkpoint(checkpoint: Path, *, while_read: bool = False) -> str | None:
    """The message for a step_N folder of a run's checkpoints/ that is gone (or lost its COMPLETE marker, which a
    delete takes with the folder's name in one rename), naming the newest complete checkpoint left there; None for
    any other path. `while_read`: it went while it was read. Export or generate of a checkpoint that the training
    run's retention deleted meanwhile said 'DeepSpeed could not consolidate the ZeRO shards in .../step_N: Directory
    ... doesn't exist. The checkpoint is incomplete or damaged' (the checkpoint was neither), or that the path
    'does not exist. Give an exported model folder, a checkpoint directory ...', naming no newer one."""
    folder = checkpoint.parent
    if not ckpt_layout.is_step_name(checkpoint.name) or (checkpoint / COMPLETE).is_file() or not folder.is_dir():
        return None
    left = ckpt_layout.complete_checkpoints(folder)
    if not left and not ckpt_layout.step_dirs(folder):
        return None  # not a run's checkpoints/ (a mistyped path): the usual message
    run = folder.parent if folder.name == ckpt_layout.CHECKPOINTS else folder
    gone = "was deleted while it was read" if while_read else "does not exist"
    newest = (
        f"The newest complete checkpoint there is now {left[-1]}: pass it, or the run folder {run}, which takes "
        "the newest"
        if left
        else f"No complete checkpoint is left in {folder}"
    )
    if newer_complete(checkpoint) is None:
        # Retention deletes a checkpoint only once a newer one is saved, complete (the rule resume's line follows
        # too): with none newer, the step was never saved there (a mistyped step, one the run has not reached, a
        # newer step_N only half written) or was removed by hand, which the retention line had blamed on retention.
        if while_read:
            return f"{checkpoint} {gone} (no newer complete checkpoint stands beside it). {newest}"
        return f"{checkpoint} does not exist: no checkpoint of that step has been saved there. {newest}"
    return f"{checkpoint} {gone} ({RETENTION}). {newest}"


@contextlib.contextmanager
def removed_while_read(checkpoint: Path) -> Iterator[None]:
    """Reading `checkpoint`: an error because it was deleted meanwhile (`removed_checkpoint`) is named as such."""
    try:
        yield
    except (NgptConfigError, OSError):
        removed = removed_checkpoint(checkpoint, while_read=True)
        if removed is None:
            raise
        raise NgptConfigError(removed) from None


def _incomplete_export(folder: Path) -> str | None:
    """The message for an export folder missing one of its two files (or holding a link to nothing in its
    place), naming the file and the fix; None for a folder that is no export. Such a folder was "neither an
    exported model nor a checkpoint directory ...", which named neither the file nor what to do."""
    config, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for file in (config, weights):
        if file.is_symlink() and not file.exists():
            return (
                f"{file} is a symbolic link to {file.readlink()}, which does not exist: the export's file it "
                "leads to was moved or deleted. Copy the whole export folder again, or export the checkpoint again"
            )
    if weights.exists() and not config.exists():
        return (
            f"{folder} holds {WEIGHTS_FILE} but no {CONFIG_FILE}: an export copied in part. Copy the whole "
            "export folder again, or export the checkpoint again"
        )
    if config.is_file() and not weights.exists():
        try:
            marked = read_config_json(config).get("format") == EXPORT_FORMAT
        except (OSError, AttributeError, *UNPARSABLE):
            marked = False
        if marked:
            return (
                f"{weights} is missing: {folder} is an exported model without its weights (an export copied in "
                "part). Copy the whole export folder again, or export the checkpoint again"
            )
    return None


def _recorded_checkpoint(export: Path) -> str:
    """Where an export's config.json names the checkpoint it was made from, and that checkpoint: an ngpt_ds
    export under training.checkpoint, a --format hf one under ngpt_ds_export.training.checkpoint (the message
    named the first for both)."""
    try:
        config = read_config_json(export / CONFIG_FILE)
    except (OSError, *UNPARSABLE):
        config = None
    if isinstance(config, dict) and isinstance(config.get("ngpt_ds_export"), dict):
        key, section = "ngpt_ds_export.training.checkpoint", config["ngpt_ds_export"].get("training")
    else:
        key, section = "training.checkpoint", config.get("training") if isinstance(config, dict) else None
    recorded = section.get("checkpoint") if isinstance(section, dict) else None
    if isinstance(recorded, str) and recorded:
        return f"{recorded}, {key} in its {CONFIG_FILE}"
    return f"its {CONFIG_FILE} names it under {key}"


def read_run_config(checkpoint: Path) -> dict[str, Any]:
    """The resolved run config the trainer saved next to the DeepSpeed files."""
    config_path = checkpoint / "config.yaml"
    if not config_path.is_file():
        raise NgptConfigError(
            f"{config_path} not found: {checkpoint} was not written by the ngpt_ds trainer "
            "(it saves config.yaml with every checkpoint)"
        )
    # Read no further than any config file (the trainer writes a few KiB): a larger one was read whole and parsed
    # by PyYAML before any message, an 11 MiB list in 36 s and 740 MiB (so 100 MiB in minutes and gigabytes), and a
    # sparse file (a few bytes in an archive kept with its holes) of any size whole.
    try:
        with config_path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(MAX_CONFIG_FILE_BYTES + 1) if size <= MAX_CONFIG_FILE_BYTES else b""
    except OSError as err:
        raise NgptConfigError(unreadable(config_path, err)) from None
    if size > MAX_CONFIG_FILE_BYTES or len(data) > MAX_CONFIG_FILE_BYTES:
        raise NgptConfigError(
            f"{config_path} holds {max(size, len(data))} bytes: the config.yaml the trainer saves with a checkpoint "
            f"is a file of at most {MAX_CONFIG_FILE_BYTES} bytes (it writes a few KiB), so it was not read; the "
            "checkpoint was altered. Use another checkpoint"
        )
    try:
        run = yaml_safe.safe_load(data.decode("utf-8"))
    except (yaml_safe.YAMLError, *UNPARSABLE) as err:
        raise NgptConfigError(f"{config_path}: not valid YAML: {yaml_safe.describe(err)}") from None
    if not isinstance(run, dict) or not isinstance(run.get("model"), dict):
        raise NgptConfigError(f"{config_path}: expected the trainer's resolved config with a 'model:' section")
    # The fields read here besides `model` (validated by ModelConfig) have the types the trainer writes; a
    # crafted or hand-edited file is named, not a TypeError deep in a reader.
    for name, kinds, what in (
        ("data_dir", (str, type(None)), "a folder path"),
        ("data_dir_absolute", (str, type(None)), "a folder path"),
        ("tokenizer_sha256", (str, type(None)), "a sha256 hex digest"),
        ("train_data_sha256", (str, type(None)), "a sha256 hex digest"),
        ("train", (dict, type(None)), "a mapping"),
        ("deepspeed", (dict, type(None)), "a mapping"),
    ):
        if not isinstance(run.get(name), kinds):
            raise NgptConfigError(
                f"{config_path}: {name} = {reprlib.repr(run.get(name))[:80]} must be {what}; the file was not "
                "written by the ngpt_ds trainer or was altered"
            )
    # The provenance an export writes into its config.json (read_checkpoint_weights): YAML aliases nest 9^7 items
    # in 8 lines, read as shared references in a blink, which json.dumps wrote out whole (37 s, 1.2 GiB; 9^9 items
    # in 10 lines: some 80 times that). Scalars only, as the trainer writes them.
    for section, name in (("train", "eval_batches"), ("deepspeed", "train_micro_batch_size_per_gpu")):
        value = (run.get(section) or {}).get(name)
        if not isinstance(value, (int, float, str, type(None))):
            raise NgptConfigError(
                f"{config_path}: {section}.{name} = {reprlib.repr(value)[:80]} must be a number; the file was not "
                "written by the ngpt_ds trainer or was altered"
            )
    return run


def _zero_stage(run: dict[str, Any], checkpoint: Path) -> int:
    return deepspeed_files.zero_stage_of(run.get("deepspeed"), f"{checkpoint / 'config.yaml'} (deepspeed section)")


def _sequence_parallel(run: dict[str, Any]) -> int:
    """train.sequence_parallel_size of the saved run config (1 when absent)."""
    size = (run.get("train") or {}).get("sequence_parallel_size", 1)
    return size if isinstance(size, int) and size > 0 else 1


def read_checkpoint_weights(
    checkpoint: Path, run: dict[str, Any], full_model: CausalLM
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, provenance) of a complete trainer checkpoint; the DeepSpeed files are read by
    ngpt_ds.deepspeed_files."""
    from ngpt_ds.parallel import merge_tensor_parallel
    from ngpt_ds.train.optim import parameter_groups

    stage = _zero_stage(run, checkpoint)
    names = {id(p): n for n, p in full_model.named_parameters()}
    group_names = [[names[id(p)] for p in g["params"]] for g in parameter_groups(full_model, 0.0)]

    def merge(shards: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        try:
            return merge_tensor_parallel(shards, full_model)
        except NgptConfigError as error:  # it knows the weights, not where they came from
            raise NgptConfigError(f"{checkpoint}: {error}") from None

    saved = deepspeed_files.read_weights(checkpoint, stage, group_names, merge)
    weights, tp_size = saved.weights, saved.tensor_parallel
    # DeepSpeed records the data x sequence ranks as its data-parallel size (ngpt_ds.train.reshape_plan.Layout);
    # the trainer's loader and evaluation cut the data over the data-parallel ranks alone.
    sp_size = _sequence_parallel(run)
    world, dp = saved.data_parallel, max(1, saved.data_parallel // sp_size)
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in weights.values()})
    deepspeed = run.get("deepspeed") or {}
    info = {
        "checkpoint": str(checkpoint),
        "step": ckpt_layout.step_of(checkpoint.name),
        "zero_stage": stage,
        "world_size": world * tp_size * saved.pipeline_parallel,  # a pipeline's stages are ranks too
        "data_parallel": dp,
        "tensor_parallel": tp_size,
        "weights": f"{saved.source}, {'/'.join(dtypes)}",
        "data_dir": recorded_data_dir(run),
        # an export carries it, so evaluate can tell the run's dataset from another under the recorded name
        "train_data_sha256": run.get("train_data_sha256"),
        "eval": {
            "batches": (run.get("train") or {}).get("eval_batches"),
            "micro_batch": deepspeed.get("train_micro_batch_size_per_gpu"),
            "data_parallel": dp,
        },
    }
    return weights, info


def recorded_data_dir(run: dict[str, Any]) -> str | None:
    """The run's dataset folder: `data_dir_absolute` where that folder exists (so a run read from another
    working folder finds its own dataset), else `data_dir` as given to the trainer (a run from before the
    absolute path was recorded, or one moved to another machine, where a relative path may name a copy)."""
    absolute = run.get("data_dir_absolute")
    if isinstance(absolute, str) and absolute and Path(absolute).is_dir():
        return absolute
    return run.get("data_dir")
