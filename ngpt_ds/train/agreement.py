"""Startup agreement between ranks: a check that fails on one rank reaches all of them, and the ranks
compare their effective configs before the engine is built.

Every function here but `prepare_or_problem` is a collective: every rank calls it at the same point.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from ngpt_ds import distributed, log
from ngpt_ds.distributed import DistEnv
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import startup_peers
from ngpt_ds.train.builder import Prepared, TrainOptions, prepare
from ngpt_ds.train.config import RunConfig, TrainConfig

_log = log.get(__name__)


def prepare_or_problem(options: TrainOptions) -> tuple[Prepared | None, str | None, DistEnv, int]:
    """`prepare` on this rank: (prepared, None, its launch environment, collective timeout), or, when a check
    fails on one of several ranks (a refusal, or any other error), (None, the message, ...) so that the rank can
    still join the process group and tell the others. Raised alone, the others waited for it in the rendezvous for
    train.dist_timeout_s and then failed with a DistStoreError traceback (a --data that one node lacks;
    launch/slurm/train.sbatch runs srun --kill-on-bad-exit=0, so nothing ends them sooner)."""
    try:
        prepared = prepare(options, resume=False)
        return prepared, None, prepared.dist_env, prepared.run.train.dist_timeout_s
    except Exception as err:  # noqa: BLE001 (any error: the others must hear of it, not wait for this rank)
        dist_env = distributed.discover()
        if dist_env.world_size == 1:
            raise
        if isinstance(err, (NgptConfigError, OSError)):
            return None, str(err), dist_env, TrainConfig().dist_timeout_s
        # Not a refusal worded for the user: an error no check names (NGPT_DS_NODE_MEMORY_BYTES="²" on one node
        # passed isdigit() and int() raised ValueError). Raised here, this rank ended before the process group
        # and the others waited in the rendezvous for train.dist_timeout_s, then blamed the network. Its
        # traceback is logged on this rank (every rank logs errors) and its one line reaches every rank.
        _log.exception(f"rank {dist_env.rank}: preparing the run failed")
        return None, f"{type(err).__name__}: {err}", dist_env, TrainConfig().dist_timeout_s


def stop_all_if_any_failed(problem: str | None) -> None:
    """Collective: every rank raises the same NgptConfigError if any rank had a problem (`prepare` failed,
    rank 0 could not set up --out)."""
    problems: list[str | None] = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(problems, problem)
    except RuntimeError as err:  # a rank that could not start gloo's threads left its line in rank 0's store
        told = startup_peers.told_by_a_lost_peer(err, dist.get_rank())
        if told is None:
            raise
        raise told from None
    failed = [rank for rank, p in enumerate(problems) if p is not None]
    if failed:
        first = problems[failed[0]]
        same = len(failed) == len(problems) and all(p == first for p in problems)
        raise NgptConfigError(first if same else f"rank {failed[0]}: {first}")


def _flat(values: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(values, dict):
        return {prefix: values}
    return {k: v for key, item in values.items() for k, v in _flat(item, f"{prefix}{key}.").items()} or {prefix: {}}


def same_config_on_every_rank(run_config: RunConfig) -> None:
    """Collective: the effective run config (model, train, DeepSpeed JSON, --data, --out) must be the same on
    every rank. A --config or preset that differs between nodes (a node-local copy, another install of
    ngpt_ds) built models of different shapes, and DeepSpeed's first broadcast aborted in gloo."""
    # Not the paths that may differ with identical contents: a preset's file in each node's install, each
    # node's copy of the DeepSpeed JSON, the default dataset in each node's cache (same_dataset_on_every_rank
    # compares the data itself), or the config file made absolute and its bytes (a node-local copy may differ in
    # comments); their parsed contents are compared.
    not_compared = (
        "config_source",
        "config_source_absolute",
        "config_source_sha256",
        "deepspeed_source",
        "data_dir",
        "data_dir_absolute",
    )
    mine = {k: v for k, v in run_config.to_dict().items() if k not in not_compared}
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    for rank in range(1, len(everyone)):
        if everyone[rank] != everyone[0]:
            first, other = _flat(everyone[0]), _flat(everyone[rank])
            differ = [
                f"{key.rstrip('.')} = {first.get(key)!r} on rank 0, {other.get(key)!r} on rank {rank}"
                for key in sorted(set(first) | set(other))
                if first.get(key) != other.get(key)
            ]
            raise NgptConfigError(
                f"ranks 0 and {rank} resolved different run configs: {'; '.join(differ[:5])}"
                + (f" (and {len(differ) - 5} more)" if len(differ) > 5 else "")
                + ". Every rank must read the same --config and --deepspeed_config files with the same ngpt_ds"
            )
