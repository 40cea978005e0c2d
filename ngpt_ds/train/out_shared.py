"""Whether every rank sees the same --out: the ranks compare what they read in the lock file rank 0 wrote
(ngpt_ds.train.run_lock.lock_run, which holds it)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch.distributed as dist

from ngpt_ds.train.manifest import RefusedFile, read_capped

SHARED_SETTLE_PAUSES_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 30.0)
"""The pauses before the ranks look again while some rank finds no train.lock at all: NFS may show a file another
node just created up to a minute late (a cached failed lookup lives as long as the folder's cached attributes,
acdirmax 60 s by default). A rank that reads another holder is answered at once: opening a file revalidates its
content on NFS (close-to-open), and rank 0 synced what it wrote."""


def _seen_lock(out_dir: Path, lock_file: str) -> str:
    """What this rank reads in <out>/train.lock, or why it cannot read it ('<...>', never a holder's text)."""
    try:
        return read_capped(out_dir / lock_file, 4096).decode(errors="replace").strip()
    except (OSError, RefusedFile) as err:
        return f"<{getattr(err, 'strerror', None) or err}>"


def _held_text(held: int) -> str:
    """What rank 0 reads through the descriptor it holds the lock by, or why it cannot ('<...>'): an error here must
    reach the other ranks through the gather that follows, not end rank 0 alone while they wait in it."""
    try:
        return os.pread(held, 4096, 0).decode(errors="replace").strip()
    except OSError as err:
        return f"<{err.strerror or err}>"


def _unreadable(seen: str | None) -> bool:
    return seen is None or seen.startswith("<")


def not_shared(out_dir: Path, lock_file: str, held: int = -1) -> str | None:
    """Collective, once rank 0 holds the lock: whether every rank reads in <out>/train.lock the holder rank 0 wrote
    there (the same answer on every rank). An --out on a node-local disk (the same path, another folder on each
    node) had trained a whole checkpoint_interval and then stopped at its first save (exit 74, a rank of another
    node 'hashing ...: No such file or directory'): a save writes one folder that rank 0 lists, hashes with the
    other ranks and renames, and the free space it checks is that of the one folder every rank writes into.
    `held`: the descriptor rank 0 holds the lock through (-1 on the other ranks)."""
    world = dist.get_world_size()
    if world == 1:
        return None
    wrong = _relative_elsewhere(out_dir, lock_file, held, world)
    if wrong is not None:
        return wrong
    seen: list[str | None] = [None] * world
    for pause in (*SHARED_SETTLE_PAUSES_S, None):
        # The holder reads through its own descriptor: opening and closing another one of the file drops every
        # fcntl lock the process holds on it (POSIX), so rank 0 had lost the run's lock right here
        dist.all_gather_object(seen, _held_text(held) if held >= 0 else _seen_lock(out_dir, lock_file))
        if _unreadable(seen[0]):
            return (
                f"--out {out_dir}: rank 0 cannot read back the {lock_file} it holds there ({seen[0]}): check the "
                "filesystem under --out (its server, the disk) and start the run again"
            )
        differs = next((r for r in range(1, world) if seen[r] != seen[0]), None)
        if differs is None:
            return None
        if pause is None or not all(seen[r] == seen[0] or _unreadable(seen[r]) for r in range(1, world)):
            break
        time.sleep(pause)
    assert differs is not None  # the loop returns otherwise
    return (
        f"--out {out_dir}: rank {differs} does not see the {lock_file} rank 0 wrote there (rank 0 reads "
        f"{seen[0]!r}, rank {differs} {seen[differs]!r}): --out is not the same folder on every node (a node-local "
        "disk). Every rank writes its part of each checkpoint into the one folder rank 0 completes: put --out on "
        "storage every node shares"
    )


def _relative_elsewhere(out_dir: Path, lock_file: str, held: int, world: int) -> str | None:
    """Collective: a relative --out that a rank started in another working directory (a launcher's `cd`, a node's
    other home) resolves to another folder there, and had been refused after 90 s of pauses as a node-local disk.
    Refused at once, naming both folders, when that rank does not read rank 0's holder; the same relative path
    reaching the same folder (a link, another mount of it) passes. A rank whose working directory cannot be read
    (removed while it ran there) says so in the gather: os.path.abspath's FileNotFoundError had ended it alone
    before the gather, the other ranks left waiting in it."""
    if out_dir.is_absolute():
        return None
    mine = _held_text(held) if held >= 0 else _seen_lock(out_dir, lock_file)
    try:
        where = os.path.abspath(out_dir)
    except OSError as err:
        where = f"<{err.strerror or err}>"
    seen: list[tuple[str, str] | None] = [None] * world
    dist.all_gather_object(seen, (where, mine))
    for rank, other in enumerate(seen):
        if other is not None and _unreadable(other[0]):
            return (
                f"--out {out_dir} is a relative path, and rank {rank}'s working directory cannot be read "
                f"({other[0][1:-1]}: removed while the rank ran in it?), so it names no folder there. Pass an "
                "absolute --out"
            )
    first = seen[0]
    assert first is not None
    for rank, other in enumerate(seen):
        if other is not None and other[0] != first[0] and other[1] != first[1]:
            return (
                f"--out {out_dir} is a relative path, and rank {rank} runs in another working directory: it names "
                f"{other[0]} there, {first[0]} on rank 0. Pass an absolute --out"
            )
    return None
