"""Checkpoints: DeepSpeed's own save/load, a completion marker written last, pruning, auto-resume.

Layout: <out>/checkpoints/step_00000200/ (DeepSpeed's files + COMPLETE + config.yaml).
A directory without COMPLETE (a save interrupted by a crash) is never resumed from.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ngpt_ds.errors import NgptConfigError

COMPLETE = "COMPLETE"
TAG_PREFIX = "step_"


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def step_of(tag: str) -> int:
    return int(tag[len(TAG_PREFIX):])


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = [d for d in checkpoint_dir.iterdir()
             if d.is_dir() and d.name.startswith(TAG_PREFIX) and d.name[len(TAG_PREFIX):].isdigit()
             and (d / COMPLETE).is_file()]
    return sorted(found, key=lambda d: step_of(d.name))


def resolve_resume(out_dir: Path, resume: str) -> Path | None:
    """--resume auto|none|PATH -> the checkpoint directory to load, or None to start fresh."""
    checkpoint_dir = out_dir / "checkpoints"
    if resume == "none":
        existing = complete_checkpoints(checkpoint_dir)
        if existing:
            raise NgptConfigError(f"--resume none, but {checkpoint_dir} already holds checkpoints (newest: "
                                  f"{existing[-1].name}). Choose another --out, or delete {checkpoint_dir} "
                                  "to start over")
        return None
    if resume == "auto":
        existing = complete_checkpoints(checkpoint_dir)
        return existing[-1] if existing else None
    path = Path(resume)
    if (path / COMPLETE).is_file():
        return path
    if path.is_dir() and complete_checkpoints(path):
        return complete_checkpoints(path)[-1]
    if path.is_dir() and complete_checkpoints(path / "checkpoints"):
        return complete_checkpoints(path / "checkpoints")[-1]
    reason = "does not exist" if not path.exists() else "holds no complete checkpoint (no COMPLETE marker)"
    raise NgptConfigError(f"--resume {resume}: {reason}. Give a checkpoint directory (…/checkpoints/step_N), "
                          "a run's --out directory, 'auto' or 'none'")


def save(engine, out_dir: Path, step: int, client_state: dict[str, Any], keep: int, config_yaml: str) -> Path:
    """Save on every rank, then mark complete and prune (rank 0). Returns the checkpoint directory."""
    checkpoint_dir = out_dir / "checkpoints"
    tag = tag_for(step)
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state=client_state)
    dist.barrier()
    path = checkpoint_dir / tag
    if dist.get_rank() == 0:
        (path / "config.yaml").write_text(config_yaml, encoding="utf-8")
        marker = path / (COMPLETE + ".tmp")
        marker.write_text(f"step {step}\n", encoding="utf-8")
        os.replace(marker, path / COMPLETE)  # written last: the checkpoint is whole
        for old in complete_checkpoints(checkpoint_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for partial in checkpoint_dir.glob(f"{TAG_PREFIX}*"):
            if partial.is_dir() and not (partial / COMPLETE).exists() and step_of(partial.name) < step:
                shutil.rmtree(partial, ignore_errors=True)
    dist.barrier()
    return path


def load(engine, path: Path) -> dict[str, Any]:
    """Load engine, optimizer and scheduler state; returns the client state saved with it."""
    load_path, client_state = engine.load_checkpoint(str(path.parent), tag=path.name,
                                                     load_optimizer_states=True, load_lr_scheduler_states=True)
    if load_path is None:
        raise NgptConfigError(f"DeepSpeed could not load the checkpoint in {path}; it may be from another "
                              "ZeRO stage or world size. Start a new run with --resume none and another --out")
    return client_state
