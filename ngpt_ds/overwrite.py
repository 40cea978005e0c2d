"""Guarded overwrites: `--overwrite` replaces only what ngpt_ds wrote there, never what it reads.

An entry script with `--overwrite` (launch/export.py, launch/prepare_data.py) calls
`check_replaceable` before any work. It refuses, with one message, a target that

- contains, equals, or lies inside a source the command reads (the checkpoint being exported,
  the corpus being tokenized): replacing it would delete the input;
- is a file, or a non-empty folder that does not hold the same kind of artifact (an export's
  config.json with its format marker, a dataset's meta.json): a typo in --out must not delete
  someone's folder;
- also holds a training run (its train.lock or checkpoints/), at its top or in a folder below it: a
  trainer once started with that folder, or one inside it, as --out would lose its checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ngpt_ds.errors import NgptConfigError

RUN_MARKERS = ("train.lock", "checkpoints")
"""What a training run leaves in its --out (ngpt_ds.train.out_folder.LOCK_FILE, ngpt_ds.train.checkpoint.CHECKPOINTS)."""


def _run_markers_in(folder: Path) -> list[str]:
    """The RUN_MARKERS in `folder` or any folder below it, as paths relative to it (its top first). The walk
    does not follow links, as the folder's removal does not, nor enter a run's checkpoints/."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        here = Path(root).relative_to(folder)
        found += [(here / name).as_posix() for name in RUN_MARKERS if name in dirs or name in files]
        dirs[:] = [d for d in dirs if d not in RUN_MARKERS]
    return found


def check_holds_no_run(folder: Path, option: str, command: str) -> None:
    """Raise NgptConfigError when `folder`, which `command` replaces whole, holds a training run's files beside
    its artifact or in a folder below it (ngpt_ds.train.run_lock names them): replacing the folder deleted the
    run's checkpoints with it."""
    run = _run_markers_in(folder)
    if run:
        shown = ", ".join(run[:4]) + (", ..." if len(run) > 4 else "")
        raise NgptConfigError(
            f"{option} {folder} also holds a training run ({shown}); {command} would delete it with "
            f"the folder. Move the run out of {folder} first, or choose another path"
        )


def _real(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_not_source(out: str | Path, sources: Iterable[tuple[str | Path, str]], option: str = "--out") -> None:
    """Refuse `out` when it is, contains, or lies inside any (path, description) source."""
    target = _real(out)
    for source, what in sources:
        src = _real(source)
        if _inside(src, target):
            raise NgptConfigError(
                f"{option} {out} is {what} or contains it ({source}); replacing it would delete "
                f"the input. Choose a folder outside {source}"
            )
        if _inside(target, src):
            raise NgptConfigError(
                f"{option} {out} is inside {what} ({source}); writing there would change the "
                f"input. Choose a folder outside {source}"
            )


def check_replaceable(
    out: str | Path,
    *,
    kind: str,
    marker: str,
    holds_kind: Callable[[Path], bool],
    sources: Iterable[tuple[str | Path, str]] = (),
    option: str = "--out",
) -> None:
    """Raise NgptConfigError unless `out` may be replaced by a new `kind` (an existing one of that kind,
    an empty folder, or nothing), and is none of the `sources`.

    kind: what the command writes, with its article ("an exported model"); marker: the file that
    identifies one ("meta.json"); holds_kind(folder): whether the folder holds one.
    """
    out = Path(out)
    check_not_source(out, sources, option)
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        what = "a symbolic link" if out.is_symlink() else "a file"
        raise NgptConfigError(
            f"{option} {out} is {what}, not a folder holding {kind}; --overwrite replaces only "
            "such a folder. Choose another path"
        )
    check_holds_no_run(out, option, "--overwrite")
    if any(out.iterdir()) and not holds_kind(out):
        bare = kind.split(" ", 1)[1] if kind.startswith(("a ", "an ")) else kind
        raise NgptConfigError(
            f"{option} {out} holds no {bare} (no {marker}); --overwrite replaces only a folder "
            "this command wrote. Choose another path, or empty that folder yourself"
        )
