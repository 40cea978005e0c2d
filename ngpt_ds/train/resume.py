"""Which checkpoint a run resumes from: --resume auto|none|PATH -> a verified checkpoint folder.

`resolve_resume` reads every file in this one process (the dry run; export, generate and evaluate
use `newest_intact`). The trainer calls `resolve_resume_on_all_ranks` once the process group has
started: the ranks first compare what they see, then verify each candidate together, each file hashed
by one rank (ngpt_ds.train.manifest.digest_share), and all get the same answer or the same error. The
folder layout is ngpt_ds.train.checkpoint's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import checkpoint, collectives, copied_checkpoint, manifest, run_lock, verified_here
from ngpt_ds.train.checkpoint import Verify
from ngpt_ds.train.checkpoint_interrupted import (
    finished_saves,
    recover_interrupted_saves,
    remembering,
    to_verify,
    why_latest_was_behind,
)
from ngpt_ds.train.ds_config import BatchPlan
from ngpt_ds.train.lineage import LINEAGE_FILE, read_origin
from ngpt_ds.train.manifest import marked_step
from ngpt_ds.train.resume_gone import newer_beside as newer_beside  # checkpoint_load imports it from here
from ngpt_ds.train.resume_gone import staging_folder

LISTING_SETTLE_PAUSES_S: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 15.0)
"""Ranks that see different checkpoints list again after each of these pauses (30 s in all) before that
is an error: a network file system may list a folder renamed on another node late (NFS caches directory
attributes for up to acdirmax, 60 s by default), as after a save or a step put back by rank 0."""


def newest_intact(checkpoint_dir: Path, warn: Callable[[str], None] = print) -> Path | None:
    """The newest complete checkpoint that passes `verify` (this process reads every file); each damaged
    newer one is skipped with one warning naming its bad file. None when there is no complete checkpoint;
    an error when all are damaged."""
    complete = checkpoint.complete_checkpoints(checkpoint_dir)
    return _newest_passing(complete, checkpoint_dir, warn, checkpoint.verify, copied_checkpoint.LOADER)


def _newest_passing(
    candidates: list[Path],
    checkpoint_dir: Path,
    warn: Callable[[str], None],
    verify: Verify,
    taker: copied_checkpoint.Taker = copied_checkpoint.RESUME_AUTO,
) -> Path | None:
    for path in reversed(candidates):
        problem = verify(path)
        if problem is None:
            if checkpoint.is_legacy(path):
                warn(checkpoint.legacy_warning(path))
            if copied := copied_checkpoint.warning(path, checkpoint_dir, taker):
                warn(copied)
            return path
        newer = manifest.newer_format(path)
        if newer is not None:
            # Not damaged, and skipping it would train on from an older step (and move this one aside): an
            # older ngpt_ds on some node of the cluster, or a downgrade.
            raise NgptConfigError(
                f"{path} was written by a newer ngpt_ds (checkpoint manifest version {newer}; this ngpt_ds reads "
                f"version {manifest.MANIFEST_VERSION}). Run the ngpt_ds that wrote it on every node, or pass --resume "
                "with an older checkpoint to go back to it on purpose"
            )
        warn(f"warning: skipping checkpoint {path.name}: {problem}. Using the one before it")
    if candidates:
        raise NgptConfigError(
            f"every checkpoint in {checkpoint_dir} is damaged (see the warnings above). "
            "Start a new run with --resume none and another --out"
        )
    return None


def named_checkpoint(out_dir: Path, resume: str) -> Path | None:
    """--resume auto|none|PATH -> the complete checkpoint PATH names (None for auto and none), from
    the folder listing alone; raises NgptConfigError when PATH (or none) cannot be followed."""
    checkpoint_dir = out_dir / checkpoint.CHECKPOINTS
    if resume == "none":
        existing = checkpoint.complete_checkpoints(checkpoint_dir)
        if existing:
            raise NgptConfigError(
                f"--resume none, but {checkpoint_dir} already holds checkpoints (newest: "
                f"{existing[-1].name}). Choose another --out, or delete {checkpoint_dir} "
                "to start over"
            )
        return None
    if resume == "auto":
        return None
    path = Path(resume)
    source = checkpoint.universal_source(path)
    if source is not None:  # a conversion is derived data: resume its step_N, which reuses it if needed
        if not (source / checkpoint.COMPLETE).is_file():
            raise NgptConfigError(
                f"--resume {resume}: a {checkpoint.UNIVERSAL_SUFFIX} folder is resumed through the checkpoint "
                f"it was converted from, and {source} holds no complete checkpoint. Give a step_N "
                "checkpoint directory"
            )
        path = source
    if (path / checkpoint.COMPLETE).is_file():
        origin = _converted_from(path)
        if origin is not None:
            raise NgptConfigError(
                f"--resume {resume}: {path} is a universal conversion of {origin} (its {checkpoint.COMPLETE} says so), "
                f"not a checkpoint. Resume from {origin} itself: a resume at another data-parallel size converts it "
                "(or reuses its intact conversion)"
            )
        if not checkpoint.is_step_name(path.name):  # the trainer takes the step from the name
            try:
                step = marked_step(path)
            except (OSError, ValueError):
                step = None
            name = checkpoint.tag_for(step) if step is not None else f"{checkpoint.TAG_PREFIX}N (N its step)"
            raise NgptConfigError(
                f"--resume {resume}: the trainer reads a checkpoint's step from its folder's name, "
                f"{checkpoint.TAG_PREFIX}N, and {path.name} is none; rename it (or copy it) as {name}"
            )
        return path
    if path.is_dir() and checkpoint.complete_checkpoints(path):
        return checkpoint.complete_checkpoints(path)[-1]
    if path.is_dir() and checkpoint.complete_checkpoints(path / checkpoint.CHECKPOINTS):
        return checkpoint.complete_checkpoints(path / checkpoint.CHECKPOINTS)[-1]
    staging = staging_folder(path)
    if staging is not None:
        raise NgptConfigError(f"--resume {resume}: {staging}")
    reason = "does not exist" if not path.exists() else "holds no complete checkpoint (no COMPLETE marker)"
    raise NgptConfigError(f"--resume {resume}: {reason}{newer_beside(path)}")


def _converted_from(path: Path) -> str | None:
    """The name of the checkpoint a folder's manifest says it was converted from (ngpt_ds's universal conversions,
    sealed by checkpoint.finish_universal), else None. Such a folder outside its step_N-universal name (the
    conversion's work folder, where a kill between its seal and its rename leaves it; a copy) had been
    advised to be renamed as step_N and resumed as a checkpoint, which it is not."""
    try:
        origin = (manifest.read_manifest(path) or {}).get("converted_from")
    except (manifest.MalformedManifest, OSError):
        return None
    name = origin.get("name") if isinstance(origin, dict) else None
    return name if isinstance(name, str) and name.isprintable() and len(name) <= 255 else None


def resolve_resume(out_dir: Path, resume: str, warn: Callable[[str], None] = print) -> Path | None:
    """--resume auto|none|PATH -> the verified checkpoint directory to load, or None to start fresh.

    auto skips a damaged checkpoint with one warning and takes the one before it; an explicit PATH to a
    damaged checkpoint is an error naming the bad file. This process reads every file (the dry run);
    the trainer's ranks use `resolve_resume_on_all_ranks` instead. A step that a killed second save
    left moved aside counts as in place, since the trainer puts it back before choosing
    (`_restore_moved_aside`); being read-only, this returns it under its moved-aside name.
    """
    # Each folder read once: a sealed save is verified to be put in place, then as the checkpoint resumed from.
    read_once = remembering({})
    verify = _resumable(read_once)
    checkpoint_dir = out_dir / checkpoint.CHECKPOINTS
    aside = {final: moved for moved, final in checkpoint.moved_aside(checkpoint_dir)}
    sealed = {final: tmp for tmp, final in finished_saves(checkpoint_dir, read_once)}  # put in place first, the newer
    for final, moved in aside.items():
        if final not in sealed:
            warn(
                f"note: the run will first put {final.name} back in place from {moved.name} (a second save of "
                f"step {checkpoint.step_of(final.name)} was interrupted after moving it aside)"
            )
    for final, moved in sealed.items():
        warn(f"note: the run will first put {final.name} in place from {moved.name} (a sealed save, interrupted)")
    aside |= sealed
    if resume == "auto":
        in_place = sorted(
            {*checkpoint.complete_checkpoints(checkpoint_dir), *aside}, key=lambda p: checkpoint.step_of(p.name)
        )
        if not in_place:
            unsaved = unsaved_lineage(out_dir)
            if unsaved is not None:
                raise NgptConfigError(unsaved)
        return _newest_passing([aside.get(p, p) for p in in_place], checkpoint_dir, warn, verify)
    if aside and resume == "none":
        raise NgptConfigError(
            f"--resume none, but {checkpoint_dir} holds a checkpoint moved aside ({next(iter(aside.values())).name}). "
            f"Choose another --out, or delete {checkpoint_dir} to start over"
        )
    named = next((moved for final, moved in aside.items() if Path(resume).absolute() == final.absolute()), None)
    if aside and named is None and Path(resume).resolve() in (out_dir.resolve(), checkpoint_dir.resolve()):
        # --resume naming this run's folder (or its checkpoints/) takes the newest step there, which the
        # run counts after putting the steps back: not the step before one moved aside.
        newest = max(
            {*checkpoint.complete_checkpoints(checkpoint_dir), *aside}, key=lambda p: checkpoint.step_of(p.name)
        )
        named = aside.get(newest, newest)
    chosen = named if named is not None else named_checkpoint(out_dir, resume)
    return None if chosen is None else _intact_or_refused(chosen, resume, warn, verify, out_dir)


def _resumable(verify: Verify) -> Verify:
    """`verify`, and for training also: a step_N folder holds the checkpoint of step N. The trainer takes
    the step from the name (which checkpoint is newest, the lineage, retention) and from the saved state
    (where training goes on): a checkpoint copied or renamed under another step's name splits the two
    (step_2 copied as step_8 was resumed as 'already trained to step 8' with step 2's weights). Reading
    its weights (export, generate) does not depend on the name."""

    def check(path: Path) -> str | None:
        problem = verify(path)  # first, always: with verify_on_all_ranks every rank takes this collective
        if problem is not None or not checkpoint.is_step_name(path.name):
            return problem
        named = checkpoint.step_of(path.name)
        try:  # verified just now: a manifest, or an older ngpt_ds's 'step N' line
            saved = marked_step(path)
        except (OSError, ValueError):  # replaced since: the next resume's verify names it
            saved = None
        if saved is not None and saved != named:
            return (
                f"{path} holds the checkpoint of step {saved} (its {checkpoint.COMPLETE} marker) under the "
                f"name of step {named}: renamed, or copied under another step's name"
            )
        return None

    return check


def _intact_or_refused(chosen: Path, resume: str, warn: Callable[[str], None], verify: Verify, out_dir: Path) -> Path:
    problem = verify(chosen)
    if problem is not None:
        before, newer = _older_checkpoints(chosen)
        if chosen.parent.resolve() == (out_dir / checkpoint.CHECKPOINTS).resolve():
            # Naming a step older than the newest is a rollback (after a divergence, say): auto alone took the
            # newest intact one, the step rolled back from, as the only advice.
            auto = "--resume auto to take the newest intact one"
            other = f"the one before it: --resume {before[-1]}, or {auto}" if before and newer else f"use {auto}"
        else:  # auto looks in --out, not where this one lies: it would start from step 0
            other = f"the one before it there: --resume {before[-1]}" if before else "none is older there"
        raise NgptConfigError(
            f"--resume {resume}: the checkpoint is damaged: {problem}. Resume from another checkpoint ({other})"
        )
    if checkpoint.is_legacy(chosen):
        warn(checkpoint.legacy_warning(chosen))
    return chosen


def unsaved_lineage(out_dir: Path) -> str | None:
    """The refusal of --resume auto in an --out that holds no complete checkpoint but records, in lineage.json,
    the checkpoint its lineage grew from (ngpt_ds.train.lineage.record_origin): a `--resume PATH` session that
    stopped before its first save. auto found nothing there and started from step 0 with new weights, and removed
    the record: a fine-tune of another run's checkpoint, rerun without its --resume PATH, became a run from
    scratch without a word. None when there is no such record."""
    record = read_origin(out_dir)
    if record is None:
        return None
    origin = record["resumed_from"]
    return (
        f"--resume auto: {out_dir / checkpoint.CHECKPOINTS} holds no checkpoint yet, but this run's lineage grew "
        f"from {origin} (step {record['step']}; {out_dir / LINEAGE_FILE}): the session that started it stopped "
        f"before its first save, and auto would start over from step 0 with new weights. Pass --resume {origin} "
        f"to continue from it, or --resume none to start a new run from step 0 here"
    )


def _older_checkpoints(chosen: Path) -> tuple[list[Path], bool]:
    """The complete checkpoints beside `chosen` (a step_N, or one a killed save left as step_N.tmp-replaced) of
    earlier steps, oldest first, and whether one of a later step is there; by step, not by name
    (step_100000000 sorts before step_99999999)."""
    name = chosen.name.removesuffix(checkpoint.REPLACED_SUFFIX)
    if not checkpoint.is_step_name(name):
        return [], False
    step = checkpoint.step_of(name)
    steps = [(checkpoint.step_of(c.name), c) for c in checkpoint.complete_checkpoints(chosen.parent)]
    return [c for s, c in steps if s < step], any(s > step for s, _ in steps)


def verify_on_all_ranks(path: Path) -> str | None:
    """Collective `verify`: every rank checks the listing and sizes, hashes its share of the files
    (manifest.digest_share: each file by one rank, about 1/world of the bytes each), and one
    all_gather gives every rank the same answer. Every rank must call it for the same folder.

    A folder that every rank verified with it in this process, unchanged since (ngpt_ds.train.verified_here: the
    same folder, files and manifest), passes without a read, once: a sealed save put in place at start-up
    (`_restore_moved_aside`) had every byte hashed again by the resume that followed."""
    world = dist.get_world_size()
    if all(collectives.all_answers(lambda: verified_here.take(path), f"looking up the verification of {path}")):
        return None
    before = verified_here.fingerprint(path)

    def verdict() -> tuple[str | None, bool]:
        mine = checkpoint.verify(path, rank=dist.get_rank(), world=world)
        # Compared before the gather: rank 0 may rename the folder as soon as the verdict is in.
        return mine, verified_here.fingerprint(path) == before

    answers = collectives.all_answers(verdict, f"verifying {path}")
    problems, unchanged = [p for p, _ in answers], answers[dist.get_rank()][1]
    problem = next((p for p in problems if p is not None), None)
    if problem is None and unchanged and before is not None:
        verified_here.remember(before)
    return problem


def _what_this_rank_sees(out_dir: Path, resume: str) -> tuple[list[tuple[str, str | None]], str | None]:
    """The checkpoints `resolve_resume` may read on this rank, each with its COMPLETE file's digest, or
    the error it would raise before reading any."""
    try:
        named = named_checkpoint(out_dir, resume)
        folders = [named] if named is not None else checkpoint.complete_checkpoints(out_dir / checkpoint.CHECKPOINTS)
        unsaved = unsaved_lineage(out_dir) if resume == "auto" and not folders else None
        if unsaved is not None:
            return [], unsaved
    except NgptConfigError as err:
        return [], str(err)
    except OSError as err:  # an answer, not an exception: the other ranks are waiting for it
        return [], f"--resume {resume}: cannot list {err.filename or out_dir} ({err.strerror or err})"
    return [(str(p), checkpoint.marker_digest(p)) for p in folders], None


def resolve_resume_on_all_ranks(out_dir: Path, resume: str, warn: Callable[[str], None] = print) -> Path | None:
    """Collective `resolve_resume`, after the process group starts; the same answer, or the same error,
    on every rank.

    First the ranks compare what they see: the candidate checkpoints and their COMPLETE manifests. An
    --out on storage that not every node shares (a node-local disk) shows up here as a clear error,
    before any rank loads a checkpoint the others do not have. Then each candidate is verified with
    `verify_on_all_ranks`: each file is read once in all, not once per rank. As every rank then sees the
    same verdicts, all take the same path and make the same collective calls.
    """
    _restore_moved_aside(out_dir / checkpoint.CHECKPOINTS, warn)
    seen, differs = _what_the_ranks_see(out_dir, resume, warn)
    if differs is not None:
        raise NgptConfigError(
            f"ranks 0 and {differs} see different checkpoints under --out {out_dir} (rank 0: "
            f"{_describe_seen(seen[0])}; rank {differs}: {_describe_seen(seen[differs])}). Every rank must see "
            "the same files: put --out on storage that every node shares (not a node-local disk)"
        )
    folders, error = seen[0]
    if error is not None:
        raise NgptConfigError(error)
    # From the agreed list, not a new listing: a folder appearing meanwhile cannot split the ranks.
    candidates = [Path(folder) for folder, _ in folders]
    verify = _resumable(verify_on_all_ranks)  # every rank reads the same agreed COMPLETE: the same answer
    if resume == "auto":
        return _newest_passing(candidates, out_dir / checkpoint.CHECKPOINTS, warn, verify)
    return _intact_or_refused(candidates[0], resume, warn, verify, out_dir) if candidates else None


def _what_the_ranks_see(out_dir: Path, resume: str, warn: Callable[[str], None]) -> tuple[list[Any], int | None]:
    """Collective: every rank's `_what_this_rank_sees`, and the first rank that sees otherwise than rank 0
    (None when all agree). While some rank differs, the ranks list again after each pause of
    LISTING_SETTLE_PAUSES_S; all take the same decisions, since all compare the same gathered lists."""
    world = dist.get_world_size()
    seen: list[Any] = [None] * world
    differs = None
    for attempt, pause in enumerate((*LISTING_SETTLE_PAUSES_S, None)):
        seen = collectives.all_answers(lambda: _what_this_rank_sees(out_dir, resume), "listing the checkpoints")
        differs = next((r for r in range(1, world) if seen[r] != seen[0]), None)
        if differs is None or pause is None:
            break
        if attempt == 0:
            warn(
                f"warning: ranks 0 and {differs} see different checkpoints under --out {out_dir}; listing again "
                f"for up to {sum(LISTING_SETTLE_PAUSES_S):g} s, in case shared storage lists new files late"
            )
        time.sleep(pause)
    return seen, differs


def _restore_moved_aside(checkpoint_dir: Path, warn: Callable[[str], None]) -> None:
    """Collective: rank 0 puts back a step_N that a killed second save of step N left moved aside
    (checkpoint.restore_moved_aside) and points a `latest` that a killed save left behind at the newest
    complete step (`_repair_latest`), before any rank lists the checkpoints; every rank then gets
    the same lines to print, or the same error. The folders the repair of interrupted saves reads whole
    (checkpoint_interrupted.to_verify) are verified first by all ranks together (`verify_on_all_ranks`), under
    rank 0's hold of the folder."""
    box: list[Any] = [([], None)]
    with contextlib.ExitStack() as stack:
        if dist.get_rank() == 0:
            try:
                # Not in a folder a running trainer holds: it may be between the two renames of its own save.
                # lock_run refuses this run there right after.
                ours = stack.enter_context(run_lock.unless_in_use(checkpoint_dir.parent))
                box[0] = ([str(p) for p in to_verify(checkpoint_dir)] if ours else None, None)
            except Exception as err:  # an answer, not an exception: the other ranks wait in the broadcast
                box[0] = ([], _restore_error(checkpoint_dir, err))
        dist.broadcast_object_list(box, src=0)
        folders, error = box[0]
        verdicts = {folder: verify_on_all_ranks(Path(folder)) for folder in folders or []} if error is None else {}
        if dist.get_rank() == 0 and error is None and folders is not None:
            try:  # a finished save a kill left unrenamed first: it may be the newer step_N
                repaired = recover_interrupted_saves(checkpoint_dir, verdicts) + checkpoint.restore_moved_aside(
                    checkpoint_dir
                )
                latest = _repair_latest(checkpoint_dir)  # after: a step put back may be the newest
                box[0] = (repaired + ([latest] if latest else []), None)
            except Exception as err:
                box[0] = ([], _restore_error(checkpoint_dir, err))
        elif dist.get_rank() == 0:
            box[0] = ([], error)
        dist.broadcast_object_list(box, src=0)
    restored, error = box[0]
    if error is not None:
        raise NgptConfigError(error + ". Rename step_N.tmp-replaced to step_N yourself, then rerun")
    for line in restored:
        warn(f"warning: {line}")


def _restore_error(checkpoint_dir: Path, err: Exception) -> str:
    """The line every rank stops with; rank 0's log holds the traceback of an error no check words (a bug)."""
    checkpoint.log_unexpected(err, f"putting back a checkpoint moved aside in {checkpoint_dir}")
    return f"cannot put back a checkpoint moved aside in {checkpoint_dir} ({type(err).__name__}: {err})"


def _repair_latest(checkpoint_dir: Path) -> str | None:
    """Rank 0 (or one process), in a folder no trainer holds: point `latest` at the newest complete
    checkpoint when a kill between a save's rename into place and `point_latest` left it on the step
    before. After the last step's save the rerun has nothing to train and saves nothing, so without this
    `latest` (which DeepSpeed's zero_to_fp32.py reads) named the older step for good. Returns the line to
    print, or None when `latest` was right, is missing, or cannot be replaced."""
    complete = checkpoint.complete_checkpoints(checkpoint_dir)
    if not complete:
        return None
    latest = checkpoint_dir / checkpoint.LATEST
    linked = latest.is_symlink()
    if not latest.is_file():  # none (a folder of copied steps; DeepSpeed's tools then fail loudly), or a FIFO
        return None  # or a folder, whose read would block or fail
    try:  # open_regular: a named pipe put there after the check above opens without waiting, and is refused
        with manifest.open_regular(latest) as f:
            raw = f.read(LATEST_MAX_BYTES + 1)  # a step name; a crafted 1 GB file was read whole (2.3 GB resident)
    except (OSError, manifest.RefusedFile):
        return None
    named = raw[:LATEST_MAX_BYTES].decode("utf-8", errors="replace").strip()
    newest = complete[-1].name
    if named == newest:
        return None
    try:
        checkpoint.point_latest(checkpoint_dir)
    except OSError:
        return None
    if linked:  # what the link points to is not shown: a link planted there to another file had printed the start
        # of that file (/etc/shadow's first line, for a trainer run as root) into the run's log
        return (
            f"checkpoints/{checkpoint.LATEST} was a symbolic link to a file not naming {newest}; it is a file naming "
            f"{newest} now"
        )
    shown = named[:80] if named[:80].isprintable() else repr(named[:80])  # no raw control bytes to the terminal
    if len(raw) > LATEST_MAX_BYTES:
        shown = f"more than {LATEST_MAX_BYTES} bytes"
    why = why_latest_was_behind(checkpoint_dir, named, complete[-1])
    return f"checkpoints/{checkpoint.LATEST} named {shown}: {why}; it names {newest} now"


LATEST_MAX_BYTES = 4096
"""More than any step folder's name: DeepSpeed's `latest` holds one tag."""


def _describe_seen(seen: tuple[list[tuple[str, str | None]], str | None]) -> str:
    folders, error = seen
    if error is not None:
        return f"error: {error}"
    if not folders:
        return "no complete checkpoint"
    names = ", ".join(f"{Path(p).name} (manifest {d[:8] if d else 'unreadable'})" for p, d in folders[-3:])
    return ("..., " if len(folders) > 3 else "") + names


def describe_batch_change(saved_deepspeed: dict[str, Any], plan: BatchPlan, seq_len: int) -> str | None:
    """The line announcing a resume with another global batch, or None when it is the same (or the
    checkpoint's config.yaml does not record it).

    The continuation itself is exact (the loader resumes at the next unseen window, whatever the split of
    the batch), but every later step then takes another number of tokens while the LR schedule still counts
    steps: a run's token budget changed without a word. `saved_deepspeed`: the `deepspeed:` section of the
    checkpoint's config.yaml."""
    try:
        micro = int(saved_deepspeed["train_micro_batch_size_per_gpu"])
        accum = int(saved_deepspeed.get("gradient_accumulation_steps", 1))
        before = int(saved_deepspeed["train_batch_size"])
    except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: .inf, which no trainer records
        return None
    if before == plan.global_batch or min(micro, accum, before) <= 0:
        return None
    ranks_before = before // (micro * accum)
    return (
        f"changed since the checkpoint: global batch {before} -> {plan.global_batch} sequences per step "
        f"(micro-batch x accumulation x data-parallel ranks: {micro} x {accum} x {ranks_before} -> "
        f"{plan.micro_batch} x {plan.grad_accum} x {plan.data_parallel}), so {before * seq_len} -> "
        f"{plan.global_batch * seq_len} tokens per step from here on. The data continues at the next unseen "
        "window; the LR schedule still counts steps (train.max_steps), so the run's token budget changes with it"
    )
