"""The all-rank check that a checkpoint's files unpickle under ngpt_ds.safe_load's allow-list, before DeepSpeed
reads any of them (ngpt_ds.train.checkpoint.load; re-exported there)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from ngpt_ds import log, safe_load
from ngpt_ds.errors import NgptConfigError

_log = log.get(__name__)


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
    where links resolved differently per node, the ranks' lists could differ and a share could go unchecked.

    The same all-reduce carries each rank's count of files and the lowest rank whose listing raised: a listing that
    failed on one rank (an I/O error of one node's view of the storage) ended that rank before the all-reduce, and a
    folder deleted between two ranks' listings (another run's retention) gave the ranks indices into different
    lists, so that one rank raised while another went on into its next collective (under NCCL: waiting until
    train.dist_timeout_s). Now every rank raises `ListedDifferently` or `Unlisted` together."""
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        files = _each_file_once(sorted(path.rglob("*.pt")))
    except OSError as err:  # every rank raises Unlisted below, naming this rank and its errno
        if err.errno is None:  # nothing to name: told here
            _log.error(f"rank {rank}: listing {path} failed", exc_info=err)
        files, unlisted = [], rank * _ERRNOS + (err.errno if err.errno is not None and 0 < err.errno < _ERRNOS else 0)
    else:
        unlisted = world * _ERRNOS
    first = next((i for i in range(rank, len(files), world) if _refusal(files[i]) is not None), len(files))
    agreed = torch.tensor([first, len(files), -len(files), unlisted], dtype=torch.int64, device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    first, fewest, most, unlisted = (int(v) for v in agreed.tolist())
    most = -most
    if unlisted < world * _ERRNOS:  # the lowest rank whose listing raised, and its errno
        who, errno = divmod(unlisted, _ERRNOS)
        reason = os.strerror(errno) if errno else f"rank {who}'s log names the error"
        raise Unlisted(
            f"{f'rank {who}: ' if world > 1 else ''}{path}: its files could not be listed: {reason}. Check the "
            "checkpoint's filesystem on that rank's node and run the same command again"
        )
    if fewest != most:
        raise ListedDifferently(
            f"{path}: the ranks list {fewest} to {most} of its files: it changed while this run checked it (deleted, "
            "or written by another run). Run the same command again, or resume from another checkpoint (--resume PATH)"
        )
    if first < len(files):
        file = files[first]
        raise _refusal(file) or NgptConfigError(f"{file} changed while the checkpoint was being checked")


_ERRNOS = 4096
"""Above every errno: the all-reduce carries a failed listing as rank * _ERRNOS + errno (the lowest rank's wins)."""


class Unlisted(NgptConfigError):
    """A rank could not list the checkpoint's files."""


class ListedDifferently(NgptConfigError):
    """The ranks listed different numbers of files in the checkpoint (deleted or changed during the check)."""
