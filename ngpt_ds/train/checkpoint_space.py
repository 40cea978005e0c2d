"""Whether --out's filesystem has room for the run's next checkpoint, asked once at startup.

Each save checks the free space first (ngpt_ds.train.checkpoint: 'not enough free space ... Nothing was written'),
which is right, but late: a run started on a disk already too full for its next checkpoint trained a whole
checkpoint interval (hours, on a cluster) and then stopped with exit 74, and every rerun did the same. This asks the
same question before the first step, with the same figures: the size of the run's newest complete checkpoint, else
16 bytes per parameter (BYTES_PER_PARAMETER_ESTIMATE, here of a lower bound on the parameters, so it
never asks more than the save will), against the free space plus what the save would free first (the leftovers of
interrupted saves and deletes, which it removes).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ngpt_ds.train.checkpoint_delete import of_the_run, written_here
from ngpt_ds.train.checkpoint_layout import (
    REPLACED_SUFFIX,
    complete_checkpoints,
    is_leftover_name,
    step_of,
)
from ngpt_ds.train.fs_errors import gib
from ngpt_ds.train.manifest import checkpoint_bytes

BYTES_PER_PARAMETER_ESTIMATE = 16
"""First-save size estimate: weights (4) + fp32 master (4) + two Adam moments (8) bytes per parameter."""


def previous_size(checkpoint_dir: Path, step: int) -> tuple[int, str] | None:
    """The bytes of the run's newest complete checkpoint of a step at most `step`, and the basis to name ('the
    size of step_N'), or None (no such checkpoint, or its manifest gives no size). The one this process wrote
    comes first, else one that the lineage held when the process started (checkpoint_delete.of_the_run). Both
    the save (ngpt_ds.train.checkpoint) and the startup check below ask this.

    A checkpoint of a step above `step` was put there during the run (retention neither counts nor deletes it):
    another, larger model's step_100 copied in, or a manifest crafted to claim 2^60 bytes, had made every save
    refuse ('not enough free space ... Nothing was written'), stopping the run."""
    lineage = [c for c in complete_checkpoints(checkpoint_dir) if step_of(c.name) <= step and of_the_run(c)]
    own = [c for c in lineage if written_here(c)] or lineage
    size = checkpoint_bytes(own[-1]) if own else None
    return None if size is None else (size, f"the size of {own[-1].name}")


def _bytes_under(path: Path) -> int:
    """Bytes of the files under `path` (a folder or a file), links not followed; what cannot be read counts 0."""
    if path.is_symlink() or not path.is_dir():
        try:
            return path.lstat().st_size
        except OSError:
            return 0
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def startup_space_problem(checkpoint_dir: Path, resumed_step: int, parameters: int | None) -> str | None:
    """Rank 0, once --out is set up: a one-line problem when the filesystem of `checkpoint_dir` cannot hold the
    run's next checkpoint, else None. `resumed_step`: the step resumed from (-1: a new run); `parameters`: a lower
    bound on the parameters whose estimate the save would ask for (memory_plan.parameters_at_least), or None where
    the save's estimate counts another share (a pipeline's rank 0 counts its own stage's): without a checkpoint to
    go by, nothing is then asked here."""
    previous = previous_size(checkpoint_dir, resumed_step)
    if previous is not None:
        need, basis = previous
    elif parameters is not None:
        need, basis = parameters * BYTES_PER_PARAMETER_ESTIMATE, f"{BYTES_PER_PARAMETER_ESTIMATE} bytes per parameter"
    else:
        return None
    existing = checkpoint_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    # What the save removes before it checks (a moved-aside step_N.tmp-replaced is put back, never removed).
    leftovers = [
        p
        for p in (sorted(checkpoint_dir.iterdir()) if checkpoint_dir.is_dir() else [])
        if is_leftover_name(p.name) and not p.name.endswith(REPLACED_SUFFIX)
    ]
    freed = sum(_bytes_under(p) for p in leftovers)
    if free + freed >= need:
        return None
    also = f" (and {gib(freed)} the save would free first: {', '.join(p.name for p in leftovers)})" if leftovers else ""
    return (
        f"not enough free space for this run's next checkpoint: it needs about {gib(need)} ({basis}), {gib(free)} "
        f"are free on the filesystem of {checkpoint_dir}{also}; training now would stop at its first save with "
        "nothing saved. Free space there (or have the quota raised), then run the same command again"
    )
