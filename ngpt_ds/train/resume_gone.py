"""What --resume of a step_N checkpoint that is gone says after why (`newer_beside`): the newest complete checkpoint
beside it, with retention named only where a newer complete one stands there (the rule export and generate follow
too: ngpt_ds.train.checkpoint_layout.newer_complete). ngpt_ds.train.resume (--resume PATH) and
ngpt_ds.train.checkpoint_load (a checkpoint deleted while the run loaded it) end their lines with it. And what
--resume of a save's staging folder, step_N.tmp-save, says instead of 'does not exist' (`staging_folder`)."""

from __future__ import annotations

from pathlib import Path

from ngpt_ds.train import checkpoint_layout as checkpoint
from ngpt_ds.train.checkpoint_layout import RETENTION, newer_complete


def newer_beside(path: Path) -> str:
    """What follows why --resume PATH cannot be followed: the newest complete checkpoint beside a step_N PATH that
    is gone, when it is newer (a training run's retention deletes its older checkpoints: the line had named no
    newer one and advised any checkpoint directory), else the kinds of path --resume takes."""
    gone = checkpoint.is_step_name(path.name) and not (path.exists() or path.is_symlink())
    newer = newer_complete(path) if gone else None  # the rule export and generate follow too
    run = path.parent.parent if path.parent.name == checkpoint.CHECKPOINTS else path.parent
    if newer is None:
        return _none_newer(path, run) if gone else _GIVE
    return (
        f" ({RETENTION}). The newest complete checkpoint beside it is {newer}: resume from it, or pass that "
        f"run's folder {run}, which takes its newest"
    )


_GIVE = ". Give a checkpoint directory (…/checkpoints/step_N), a run's --out directory, 'auto' or 'none'"


def _none_newer(path: Path, run: Path) -> str:
    """`newer_beside` for a step_N that is gone from a run's checkpoints with no newer complete one beside it (so not
    deleted by retention: never saved there, or removed by hand, or deleted while it was read): the checkpoints that
    are there. The line had ended with the advice for any path ('Give a checkpoint directory ..., a run's --out
    directory, 'auto' or 'none''), which named none of them. A folder with no step_N in it (a mistyped path) keeps
    that advice."""
    folder = path.parent
    if not folder.is_dir():
        return _GIVE
    try:
        steps = checkpoint.step_dirs(folder)
        complete = checkpoint.complete_checkpoints(folder)
    except OSError:
        return _GIVE
    if not steps and folder.name != checkpoint.CHECKPOINTS:
        return _GIVE
    why = " (no newer complete checkpoint stands beside it, so the run's retention did not delete it)"
    if complete:
        return (
            f"{why}. The newest complete checkpoint beside it is {complete[-1]}: resume from it, or pass that run's "
            f"folder {run}, which takes its newest"
        )
    return (
        f"{why}. {folder} holds no complete checkpoint: resume from a checkpoint of another run, or pass --resume "
        "none to start from step 0"
    )


def staging_folder(path: Path) -> str | None:
    """Why --resume step_N.tmp-save is not followed, and what to resume from; None where PATH is no save's staging
    folder. A sealed one whose files fail their check (an --out copied in the middle of a save: `mv` to another
    filesystem) is kept aside by the start-up before --resume is read, and a finished one put in place as step_N: the
    line said the folder the user had just named 'does not exist'."""
    step_name = path.name[: -len(checkpoint.TEMP_SUFFIX)]
    if not (path.name.endswith(checkpoint.TEMP_SUFFIX) and checkpoint.is_step_name(step_name)):
        return None
    final = path.with_name(step_name)
    if (final / checkpoint.COMPLETE).is_file():
        return f"a save's staging folder, never resumed from; {final} holds that step's complete checkpoint: resume from it"
    newest = checkpoint.complete_checkpoints(path.parent)
    instead = f"--resume {newest[-1]} (the newest complete checkpoint beside it), or " if newest else ""
    return (
        "a save's staging folder (a save in progress, or one interrupted or copied in its middle; any warning above "
        f"says what this start-up did with it), never resumed from. Resume with {instead}--resume auto"
    )
