"""The all-rank check that a checkpoint's files unpickle under ngpt_ds.safe_load's allow-list, before DeepSpeed
reads any of them (ngpt_ds.train.checkpoint.load; re-exported there)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from ngpt_ds import safe_load
from ngpt_ds.errors import NgptConfigError


def _refusal(file: Path) -> NgptConfigError | None:
    try:
        safe_load.check(file)
    except NgptConfigError as err:
        return err
    except Exception as err:  # a truncated or foreign file: torch raises many types
        return NgptConfigError(f"{file} could not be read ({type(err).__name__}: {err}); the checkpoint is damaged")
    return None


def _each_file_once(names: list[Path]) -> list[Path]:
    """`names` less those naming a file met under an earlier name (device and inode, links followed): a checkpoint
    holding one large file under many names (hard links, symbolic links), which verify reads once
    (ngpt_ds.train.manifest._digests), had each rank unpickle it once per name. A name that cannot be stat'ed is
    kept: its check names it."""
    seen: set[tuple[int, int]] = set()
    kept = []
    for name in names:
        try:
            info = name.stat()
        except OSError:
            kept.append(name)
            continue
        if (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            kept.append(name)
    return kept


def check_files_on_all_ranks(path: Path, device: torch.device | str) -> None:
    """Unpickle every file of the checkpoint under ngpt_ds.safe_load's allow-list before DeepSpeed
    reads any. Each rank checks its share; one all-reduce agrees on the first refused file, and every
    rank raises the same error for it. DeepSpeed reads some files on one rank only (a rank's optimizer
    states, a ZeRO-3 shard): a refusal there alone would leave the other ranks waiting in a collective. Each file is
    checked once, under the first of its names (`_each_file_once`). Like the verification on resume, this assumes
    every rank sees the same files (a checkpoint on storage the nodes share, which the trainer checks at startup):
    where links resolved differently per node, the ranks' lists could differ and a share could go unchecked."""
    files = _each_file_once(sorted(path.rglob("*.pt")))
    rank, world = dist.get_rank(), dist.get_world_size()
    first = next((i for i in range(rank, len(files), world) if _refusal(files[i]) is not None), len(files))
    agreed = torch.tensor([first], dtype=torch.int64, device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    if int(agreed.item()) < len(files):
        file = files[int(agreed.item())]
        raise _refusal(file) or NgptConfigError(f"{file} changed while the checkpoint was being checked")
