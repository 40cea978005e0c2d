"""What a diverged run says: the exception, and the messages naming what went non-finite and what is left.

The trainer's loop raises `TrainingDiverged` on every rank (exit 2) when the training loss, the validation
loss, or the norm of a sphere matrix's fp32 master rows, is NaN or inf, or when a weight about to be saved is. The messages below are its text; the loop adds the summary.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist

from ngpt_ds.train import lineage, out_moved
from ngpt_ds.train.checkpoint_layout import step_of
from ngpt_ds.train.collectives import all_reduce_on


class TrainingDiverged(RuntimeError):
    """The loss, or the norm of a sphere matrix, became NaN or inf."""


def loss_message(loss: float, step: int, lr: float, precision: str) -> str:
    """The training loss at `step` is not finite."""
    precision_hint = ', try fp32 ("bf16": {"enabled": false}) to rule out precision' if precision != "fp32" else ""
    return (
        f"the training loss became {loss} at step {step}; nothing was saved after it. "
        f"Hints: lower train.lr (now {lr:g}){precision_hint}, check the data. "
    )


def val_loss_message(loss: float, step: int, lr: float) -> str:
    """The validation loss after `step` is not finite while the training loss was: the weights of that step
    are not saved (a week-long run trained on from them and saved them as its newest checkpoint)."""
    return (
        f"the validation loss became {loss} at step {step} (the training loss was finite); nothing was saved "
        f"at or after it. Hints: lower train.lr (now {lr:g}), check the validation data. "
    )


def sphere_message(deviations: dict[str, float], step: int, lr: float) -> str:
    """Some sphere matrix's rows left the sphere at `step`. `deviations`: each matrix's largest
    |norm - 1| over its rows, as the hypersphere hook re-reads them."""
    broken = {name: d for name, d in deviations.items() if not math.isfinite(d)}
    # A squared norm that overflowed to inf (rows of ~1e19 and more) renormalizes its row to zeros: finite
    # when re-read, but off the sphere by 1. Named as such, not as "(gone again when re-read)".
    broken = broken or {name: d for name, d in deviations.items() if d > 1e-3}
    names = ", ".join(f"{name} ({'norm off by ' if math.isfinite(d) else ''}{d:.3g})" for name, d in broken.items())
    return (
        f"the fp32 master weights of sphere matrix {names or '(none when re-read)'} became non-finite (a norm "
        f"is nan or inf, or overflowed to inf and left the row at zero) at step "
        f"{step}, while the loss may still look fine; nothing was saved after it. Hints: lower train.lr "
        f"(now {lr:g}), check the checkpoint or data the run started from. "
    )


def nonfinite_weights(model: torch.nn.Module, device: torch.device | str) -> list[str]:
    """Collective, on every rank before a save: the names of the parameters that hold a NaN or inf on some rank
    (this rank's share of each: a ZeRO 3 partition, a tensor-parallel shard, a pipeline stage's layers), sorted.
    The loss of a step is computed before its update: an update that overflowed (no clipping, a huge LR, an
    inf gradient) left NaN weights under a finite loss, the step's checkpoint saved them, and the next step's
    NaN loss then called that checkpoint intact, so every resume diverged again."""
    local = [name for name, p in model.named_parameters() if not torch.isfinite(getattr(p, "ds_tensor", p)).all()]
    flag = torch.tensor([float(bool(local))], device=device)
    if all_reduce_on(flag, device).item() == 0:
        return []
    every: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(every, local)
    return sorted({name for names in every for name in names})


def weights_message(names: list[str], step: int, lr: float) -> str:
    """Weights (`nonfinite_weights`) became NaN or inf at `step`, whose loss was finite."""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (
        f"the weights {shown} became NaN or inf in the update of step {step} (its loss, computed before the "
        f"update, was finite); nothing was saved at or after it. Hints: lower train.lr (now {lr:g}), set "
        '"gradient_clipping" in the DeepSpeed config, check the data. '
    )


def checkpoints_left(out_dir: Path, newest_checkpoint: Path | None, checkpoint_interval: int) -> str:
    """What a divergence (or a stop) leaves to resume from, after the newest complete checkpoint.

    With no checkpoint yet (a fresh run before its first save), the rerun starts from step 0: saying
    'Checkpoints up to step N are intact' then sent the operator looking for a folder that did not exist.
    The step named is the newest checkpoint's own: it had been the step before the one that diverged, a
    checkpoint that exists only on a checkpoint_interval of 1 ('up to step 4 ... the newest, step_00000003')."""
    # --out moved or removed: every rank holds it from the run's lock (ngpt_ds.train.out_moved), before and after saves
    moved = out_moved.left_line(
        out_dir, None if newest_checkpoint is None else newest_checkpoint.name, checkpoint_interval
    )
    if moved is not None:
        return moved
    if newest_checkpoint is None:
        return (
            f"No checkpoint was saved yet (train.checkpoint_interval {checkpoint_interval}): "
            "running the same command again starts from step 0"
        )
    checkpoints = out_dir / "checkpoints"
    if not out_dir.is_dir():  # moved (mv) or deleted, and never held (a caller outside the trainer)
        return (
            f"{out_dir} is gone (moved or deleted while the run trained); its checkpoints, up to step "
            f"{step_of(newest_checkpoint.name)}, went with it: run the same command with --out at the folder's new "
            "place to continue from its newest"
        )
    if not lineage.in_run_folder(out_dir, newest_checkpoint):  # a linked step_N is the run's
        # Resumed from another folder's checkpoint (--resume PATH), nothing saved here yet: --resume auto in
        # this --out would start from step 0.
        return (
            f"No checkpoint was saved in {checkpoints} yet: running the same command again starts from "
            f"{newest_checkpoint} again (its --resume)"
        )
    return (
        f"Checkpoints up to step {step_of(newest_checkpoint.name)} are intact in {checkpoints} "
        f"(--resume auto continues from the newest, {newest_checkpoint.name})"
    )
