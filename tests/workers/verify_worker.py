"""Two ranks choose a checkpoint to resume together (ngpt_ds.train.resume.resolve_resume_on_all_ranks),
recording which files each rank hashed. Every rank's answer goes into the JSON written by rank 0.

    torchrun --nproc_per_node 2 verify_worker.py OUT_JSON RUN_DIR RESUME [--own-run-dir] [--unlistable-on-rank-1]
                                                         [--universal TARGET SOURCE] [--late-checkpoint-on-rank-1]

--own-run-dir: rank r looks in RUN_DIR/rank<r> instead (an --out that is not shared storage).
--universal TARGET SOURCE: instead, ask whether TARGET is an intact conversion of SOURCE
(checkpoint.is_converted_from, verified by both ranks together); "chosen" is the answer.
--late-checkpoint-on-rank-1: from its second listing on, rank 1 sees one more checkpoint folder (a
save landing while the ranks choose).
--listing-lags-on-rank-1: rank 1's first two listings miss the newest checkpoint folder (a network file
system listing a folder renamed on another node late).
--settle-pauses S,...: the pauses between listings while the ranks disagree (resume.LISTING_SETTLE_PAUSES_S;
short by default here, so that disagreeing ranks stop in a second).
--unlistable-on-rank-1: listing the checkpoints folder fails on rank 1 (EACCES, as on a node whose
mount denies it; root ignores file modes, so the listing is made to fail).
"""

import argparse
import errno
import sys

import torch.distributed as dist
from common import every_rank, run_worker


def choose(
    run_dir: str,
    resume: str,
    own_run_dir: bool,
    unlistable_on_rank_1: bool,
    universal: list[str] | None,
    late_checkpoint_on_rank_1: bool = False,
    listing_lags_on_rank_1: bool = False,
    settle_pauses: tuple[float, ...] = (0.1,),
) -> list[dict]:
    from pathlib import Path

    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.train import checkpoint, manifest
    from ngpt_ds.train import resume as resume_module

    hashed: list[str] = []
    digest = manifest._digest

    def recording_digest(path: Path) -> str:
        hashed.append(str(path))
        return digest(path)

    manifest._digest = recording_digest
    resume_module.LISTING_SETTLE_PAUSES_S = settle_pauses
    if listing_lags_on_rank_1 and dist.get_rank() == 1:
        listed_now = checkpoint.complete_checkpoints
        listings = []

        def lagging(checkpoint_dir: Path) -> list[Path]:
            listings.append(checkpoint_dir)
            return listed_now(checkpoint_dir)[: -1 if len(listings) <= 2 else None]

        checkpoint.complete_checkpoints = lagging
    if unlistable_on_rank_1 and dist.get_rank() == 1:

        def denied(checkpoint_dir: Path) -> list[Path]:
            raise PermissionError(errno.EACCES, "Permission denied", str(checkpoint_dir))

        checkpoint.complete_checkpoints = denied
    if late_checkpoint_on_rank_1 and dist.get_rank() == 1:
        listed = checkpoint.complete_checkpoints
        calls = []

        def with_a_late_one(checkpoint_dir: Path) -> list[Path]:
            calls.append(checkpoint_dir)
            late = [checkpoint_dir / "step_99999999"] if len(calls) > 1 else []
            return listed(checkpoint_dir) + late

        checkpoint.complete_checkpoints = with_a_late_one
    out = Path(run_dir) / f"rank{dist.get_rank()}" if own_run_dir else Path(run_dir)
    warnings: list[str] = []
    mine = {"rank": dist.get_rank(), "warnings": warnings, "hashed": hashed, "chosen": None, "error": None}
    try:
        if universal:
            target, source = (Path(p) for p in universal)
            mine["chosen"] = checkpoint.is_converted_from(target, source, verify=resume_module.verify_on_all_ranks)
        else:
            chosen = resume_module.resolve_resume_on_all_ranks(out, resume, warn=warnings.append)
            mine["chosen"] = str(chosen) if chosen is not None else None
    except NgptConfigError as err:
        mine["error"] = str(err)
    return every_rank(mine)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out_json")
    parser.add_argument("run_dir")
    parser.add_argument("resume")
    parser.add_argument("--own-run-dir", action="store_true")
    parser.add_argument("--unlistable-on-rank-1", action="store_true")
    parser.add_argument("--universal", nargs=2, metavar=("TARGET", "SOURCE"))
    parser.add_argument("--late-checkpoint-on-rank-1", action="store_true")
    parser.add_argument("--listing-lags-on-rank-1", action="store_true")
    parser.add_argument("--settle-pauses", type=lambda text: tuple(float(x) for x in text.split(",")), default=(0.1,))
    args = parser.parse_args(sys.argv[1:])
    run_worker(
        args.out_json,
        lambda: choose(
            args.run_dir,
            args.resume,
            args.own_run_dir,
            args.unlistable_on_rank_1,
            args.universal,
            args.late_checkpoint_on_rank_1,
            args.listing_lags_on_rank_1,
            args.settle_pauses,
        ),
        timeout_s=60,
    )
