"""The on-disk layout of a run folder's checkpoints: names, listings and the `latest` pointer (the one place
that defines it; training, resume, reshape and inference all use it):

    <out>/checkpoints/step_00000200/           DeepSpeed's files + config.yaml + COMPLETE (the manifest)
    <out>/checkpoints/step_00000200.tmp-save/  a save in progress; never resumed from, removed by the next save;
                                               once sealed (COMPLETE), put in place at the next start-up when
                                               provably the run's finished save, else kept as
                                               step_00000200.interrupted-save-<UTC time>/ (never deleted)
                                               (ngpt_ds.train.checkpoint_interrupted)
    <out>/checkpoints/step_00000200.tmp-replaced/
                                               step_00000200 moved aside by a second save of step 200 in the
                                               process that wrote it: put back if a kill left no
                                               step_00000200, else removed
    <out>/checkpoints/step_00000100.tmp-delete/
                                               a folder being deleted (retention, a replaced step, ...):
                                               renamed first, so no step_N name ever holds half of one;
                                               never resumed, listed or exported; what cannot be removed
                                               is tried again at each save, with a warning naming the file
    <out>/checkpoints/latest                   DeepSpeed's pointer: always the newest complete tag
    <out>/checkpoints/writer.lock              only where checkpoints/ is a link: names the trainer of the
                                               --out that writes there (ngpt_ds.train.run_lock); never a
                                               step_N name
    <out>/checkpoints/zero_to_fp32.py          DeepSpeed's recovery scripts, which each save writes again
    <out>/checkpoints/zero_to_torch.py         (deepspeed 0.19: engine._copy_recovery_script, on global rank 0)
    <out>/checkpoints/abandoned-<UTC time>/    checkpoints of an earlier lineage, moved aside, never deleted
                                               (ngpt_ds.train.lineage)
    <out>/checkpoints/step_00000200.not-this-run-<UTC time>/
                                               a step_00000200 this run did not write (copied in during the
                                               run), renamed straight to this name by the run's save of step
                                               200 (never via .tmp-replaced, which a restart puts back);
                                               never listed, resumed or deleted
    <out>/checkpoints/step_00000200-universal/ step_00000200 converted for another data-parallel size
                                               (ngpt_ds.train.reshape_convert); never a step_N name, so never
                                               resumed or exported as one; removed with its step by retention

Saving and loading: ngpt_ds.train.checkpoint; deleting: ngpt_ds.train.checkpoint_delete.
"""

from __future__ import annotations

import os
from pathlib import Path

from ngpt_ds.files import replace_file
from ngpt_ds.train.manifest import COMPLETE, fsync_dir

CHECKPOINTS = "checkpoints"
TAG_PREFIX = "step_"
TEMP_SUFFIX = ".tmp-save"
"""DeepSpeed writes into step_N.tmp-save; never a step_N name, so nothing resumes from a half-written save."""
REPLACED_SUFFIX = ".tmp-replaced"
"""The process's own step_N moved aside for its second save of the same step; removed once the new one is in
place, put back when a kill left no step_N (`restore_moved_aside`). A step_N the process did not write never
takes this name (ngpt_ds.train.checkpoint_delete.move_out_kept)."""
DELETE_SUFFIX = ".tmp-delete"
"""A folder being deleted (an old step_N, a step_N-universal, a moved-aside step_N) is first renamed to
<name>.tmp-delete (<name>.<k>.tmp-delete when that is taken), then removed: a delete cut short (a kill, a
file that cannot be removed) never leaves part of a checkpoint, COMPLETE manifest and all, under its name."""
RETENTION = "a training run's retention (train.keep_checkpoints) deletes its older checkpoints as it saves newer ones"
"""Why a step_N named by a user is gone while newer ones stand (resume, export, generate say it in these words)."""
LEFTOVER_SUFFIXES = (TEMP_SUFFIX, REPLACED_SUFFIX, DELETE_SUFFIX)
"""step_* names ending so are never resumed, listed or exported; each save removes them (ngpt_ds.train.checkpoint)."""
RECOVERY_SCRIPTS = ("zero_to_fp32.py", "zero_to_torch.py")
"""Copied into checkpoints/ by DeepSpeed at each save with shutil.copyfile, which follows a link at the
destination, and then made executable."""
ABANDONED_PREFIX = "abandoned-"
NOT_THIS_RUN_INFIX = ".not-this-run-"
"""step_N.not-this-run-<UTC time>: a step_N folder this run did not write (a copy put there during the run) that
a save of step N moved out of its name; never listed, resumed or deleted (ngpt_ds.train.checkpoint)."""
UNIVERSAL_SUFFIX = "-universal"
"""step_N-universal: DeepSpeed's universal form of step_N, made to resume it at another data-parallel size."""
LATEST = "latest"


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def step_of(tag: str) -> int:
    return int(tag[len(TAG_PREFIX) :])


def is_step_name(name: str) -> bool:
    """step_ and ASCII digits 0-9 only: the names `step_of` reads. str.isdigit also takes other scripts'
    digits and superscripts ('step_²'), which int() refuses: one such folder made every listing raise."""
    digits = name[len(TAG_PREFIX) :]
    return name.startswith(TAG_PREFIX) and digits.isascii() and digits.isdecimal()


def is_step_dir(path: Path) -> bool:
    """A step_N folder (complete or not); temporary and abandoned folders never match."""
    return is_step_name(path.name) and path.is_dir()


def step_dirs(checkpoint_dir: Path) -> list[Path]:
    """Every step_N folder, complete or not, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted((d for d in checkpoint_dir.iterdir() if is_step_dir(d)), key=lambda d: step_of(d.name))


def universal_name(tag: str) -> str:
    return tag + UNIVERSAL_SUFFIX


def universal_source(path: Path) -> Path | None:
    """The step_N folder a step_N-universal folder was converted from (None for any other name)."""
    name = path.name
    if not name.endswith(UNIVERSAL_SUFFIX):
        return None
    source = path.with_name(name[: -len(UNIVERSAL_SUFFIX)])
    return source if is_step_name(source.name) else None


def universal_step(universal_dir: Path) -> int:
    """The step of the checkpoint a `universal_dirs` entry was converted from."""
    source = universal_source(universal_dir)
    assert source is not None  # universal_dirs lists only folders that name their source
    return step_of(source.name)


def universal_dirs(checkpoint_dir: Path) -> list[Path]:
    """Every step_N-universal folder (complete or not), oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = [d for d in checkpoint_dir.iterdir() if d.is_dir() and universal_source(d) is not None]
    return sorted(found, key=universal_step)


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoint directories (with a COMPLETE marker), oldest first. Not yet verified: see `verify`."""
    return [d for d in step_dirs(checkpoint_dir) if (d / COMPLETE).is_file()]


def newer_complete(checkpoint: Path) -> Path | None:
    """The newest complete checkpoint beside a step_N `checkpoint`, when it is of a later step than N; else None.
    Retention deletes a checkpoint only once a newer one is saved, complete: only then can it have taken step_N, and
    resume (ngpt_ds.train.resume.newer_beside), export and generate (ngpt_ds.infer.run_checkpoint.removed_checkpoint)
    say so (RETENTION) by this one rule. Export and generate had taken any newer step_N folder, a half-written one
    (no COMPLETE) included, as retention's sign, where resume wanted a complete one."""
    if not is_step_name(checkpoint.name):
        return None
    newest = complete_checkpoints(checkpoint.parent)[-1:]
    return newest[0] if newest and step_of(newest[0].name) > step_of(checkpoint.name) else None


def point_latest(checkpoint_dir: Path, upto: int | None = None) -> None:
    """DeepSpeed's `latest` file names the newest complete tag (of a step at most `upto`: a save names its own
    step, not a newer checkpoint put there from elsewhere during the run), or does not exist."""
    complete = [c for c in complete_checkpoints(checkpoint_dir) if upto is None or step_of(c.name) <= upto]
    latest = checkpoint_dir / LATEST
    if not complete:
        latest.unlink(missing_ok=True)
        return
    # latest.tmp created new, never through a link planted there; removed when the write fails (disk full)
    replace_file(latest, complete[-1].name.encode("utf-8"))


def is_leftover_name(name: str) -> bool:
    """step_N.tmp-save, step_N.tmp-replaced, step_N.tmp-delete and step_N-universal.tmp-save (reshape's work
    folder) and the like: what an interrupted save, conversion or delete leaves; never a checkpoint."""
    return name.startswith(TAG_PREFIX) and name.endswith(LEFTOVER_SUFFIXES)


def moved_aside(checkpoint_dir: Path) -> list[tuple[Path, Path]]:
    """(step_N.tmp-replaced, step_N) for each complete step a killed second save left moved aside and
    whose name nothing holds: what `restore_moved_aside` puts back. Reads only the folder listing."""
    found = []
    for aside in sorted(checkpoint_dir.iterdir()) if checkpoint_dir.is_dir() else []:
        if not aside.name.endswith(REPLACED_SUFFIX):
            continue
        final = aside.with_name(aside.name[: -len(REPLACED_SUFFIX)])
        if (
            is_step_name(final.name)
            and not aside.is_symlink()
            and not final.exists()
            and not final.is_symlink()
            and (aside / COMPLETE).is_file()
        ):
            found.append((aside, final))
    return found


def restore_moved_aside(checkpoint_dir: Path) -> list[str]:
    """Rank 0 (or one process): put each complete step_N.tmp-replaced back under its step_N name when
    nothing holds that name. `_finish_save` moves the old step_N aside just before renaming the new one
    into place; a kill between the two renames left the step under neither name: --resume auto then
    did not see it and the next save deleted it. Returns one line per folder put back."""
    restored = []
    for aside, final in moved_aside(checkpoint_dir):
        os.rename(aside, final)
        restored.append(
            f"put {final.name} back in place: a second save of step {step_of(final.name)} was interrupted "
            f"after moving it aside to {aside.name}"
        )
    if restored:
        fsync_dir(checkpoint_dir)
        point_latest(checkpoint_dir)
    return restored
