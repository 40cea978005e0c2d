"""Whether the checkpoint taken as a run's newest was copied in from another run's --out (a colleague's checkpoint
put into checkpoints/ between two jobs): the one warning the trainer's --resume auto and the loaders given a run
folder (export, generate, evaluate) print before they use it. Copying is legitimate, so it is a warning.

Two records tell it: the seal record of the step folders a checkpoint was sealed beside
(checkpoint_interrupted.sealed_beside_others), and, for a keep-1 run's checkpoint sealed beside nothing of its own,
the run id its save recorded (run_identity.saved_by_another_run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ngpt_ds.train import manifest, run_identity
from ngpt_ds.train.checkpoint_interrupted import sealed_beside_others


@dataclass(frozen=True)
class Taker:
    """Who takes the checkpoint, in the warning's words."""

    takes: str
    """Before the step's name: "--resume auto continues from"."""
    instead: str
    """What to do if the copy is not meant."""


RESUME_AUTO = Taker(
    "--resume auto continues from",
    "stop now and move {name} out of {checkpoints}: --resume auto then takes this run's own newest",
)
LOADER = Taker(
    "the newest checkpoint of this run folder is",
    "pass the checkpoint folder you mean ({checkpoints}/step_N) instead of the run folder",
)


def warning(path: Path, checkpoints: Path, taker: Taker) -> str | None:
    """The warning for checkpoint `path`, the newest of `checkpoints` (a run's checkpoints/ folder), when it was
    copied in from another run; None when nothing says so (or the checkpoint is older than these records)."""
    instead = taker.instead.format(name=path.name, checkpoints=checkpoints)
    if differ := sealed_beside_others(path):
        return (
            f"warning: {taker.takes} {path.name}, which was not saved beside this run's checkpoints: its manifest "
            f"records {', '.join(differ)} with other contents than {checkpoints} holds under that name (a checkpoint "
            f"copied in from another run). If that is not meant, {instead}"
        )
    try:
        other = run_identity.saved_by_another_run(manifest.read_manifest(path), checkpoints.parent)
    except (manifest.MalformedManifest, OSError):  # verified a moment ago: only a change since then
        return None
    if other:
        return (
            f"warning: {taker.takes} {path.name}, which was saved by {other} (a checkpoint copied in from another "
            f"run). If that is not meant, {instead}"
        )
    return None
