"""Which config file a run folder was trained from, and whether it is the file this run uses.

Each run folder's config.yaml and each step_N/config.yaml record `config_source` (--config as written),
`config_source_absolute` (made absolute where the run started) and `config_source_sha256` (the file's bytes then). Three things ask: the default --out
(runs/<config name>) refuses another file's run, an explicit --out into another file's run warns, and retention
never deletes another file's checkpoints (ngpt_ds.train.checkpoint_delete). README, "Checkpoints".
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ngpt_ds import yaml_safe
from ngpt_ds.config_files import parsed_sha256
from ngpt_ds.errors import UNPARSABLE, NgptConfigError
from ngpt_ds.model.config import PRESET_DIR
from ngpt_ds.train.checkpoint_layout import CHECKPOINTS, step_dirs
from ngpt_ds.train.manifest import RefusedFile, read_capped
from ngpt_ds.train.summary import MAX_CONFIG_BYTES


def check_default_folder_is_this_configs(out_dir: Path, config_path: Path) -> None:
    """With --out left out, the run folder runs/<the config's name> is named after the file, not the path:
    exp1/model.yaml and then exp2/model.yaml both went to runs/model, and the second resumed the first's
    checkpoint (its changed fields listed as edits). Refused when the folder's run was trained from another file
    (its config.yaml's config_source, relative to the working folder as runs/ is; else its newest checkpoint's)."""
    recorded = _recorded_config_source(out_dir)
    if recorded is None or same_config_file(Path(recorded[0]), config_path, recorded[1]):
        return
    saved = recorded[0]
    raise NgptConfigError(
        f"--config {config_path} trains in {out_dir} when --out is left out (runs/<the config file's name>), and "
        f"the run there was trained from another file, {saved}: two configs of the same name share that folder, "
        f"and this one would resume that run. Pass --out runs/<a name of its own> to start a new run, or "
        f"--out {out_dir} to continue that run with this config"
    )


def _recorded_config_source(out_dir: Path) -> tuple[str, str | None] | None:
    """The config file a run folder's run was trained from and the sha256 of its bytes then, as its config.yaml
    records them (read_config_record); None if it records no file."""
    # step_N folders only, newest first (one cut short by a kill still names its run's config): a
    # step_N.not-this-run-* copy holds another run's config.yaml, a .tmp-save or .tmp-delete one being written or removed
    checkpoints = [step / "config.yaml" for step in reversed(step_dirs(out_dir / CHECKPOINTS))]
    for path in (out_dir / "config.yaml", *checkpoints):
        try:
            saved, digest = read_config_record(path)
        except ValueError:
            continue
        if saved is not None:
            return saved, digest
    return None


def read_config_source(path: Path) -> str | None:
    """The config file a config.yaml records: its config_source_absolute, else (an ngpt_ds before it) its
    config_source, which is relative to a working folder no longer known; None if it records neither; ValueError
    if it cannot be read."""
    return read_config_record(path)[0]


def read_config_record(path: Path) -> tuple[str | None, str | None]:
    """(read_config_source(path), the sha256 of the file's bytes it records, or None: an ngpt_ds before it)."""
    try:  # a regular file of at most 1 MiB (read_capped): not a named pipe, which would block this rank
        data = yaml_safe.safe_load(read_capped(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except (OSError, RefusedFile, yaml_safe.YAMLError, UnicodeDecodeError, *UNPARSABLE) as err:
        raise ValueError(f"{path}: {err}") from err
    if not isinstance(data, dict):
        return None, None
    digest = data.get("config_source_sha256")
    digest = digest if isinstance(digest, str) else None
    # The path as written named another file from another working folder: configs/a.yaml saved from folder A and
    # a run from folder B of B's own configs/a.yaml were taken for the same file, and retention deleted A's.
    for key in ("config_source_absolute", "config_source"):
        if isinstance(data.get(key), str):
            return data[key], digest
    return None, digest


def config_file_sha256(path: Path) -> str | None:
    """sha256 of the config file's bytes: those this process parsed (config_files.parsed_sha256), else read now
    (capped, as a regular file); None when it cannot be read. Hashed by a second read after the parse, a file
    replaced in between (a colleague's edit, an rsync) was recorded with a hash of settings the run never used."""
    parsed = parsed_sha256(path)
    if parsed is not None:
        return parsed
    try:
        return hashlib.sha256(read_capped(path, MAX_CONFIG_BYTES)).hexdigest()
    except (OSError, RefusedFile, ValueError):
        return None


def other_config_warning(out_dir: Path, config_path: Path, config_sha256: str | None = None) -> str | None:
    """An explicit --out holding a run trained from another config file: the line rank 0 logs at startup.
    `config_sha256`: of the bytes this run started from (read now when None)."""
    recorded = _recorded_config_source(out_dir)
    if recorded is None or same_config_file(Path(recorded[0]), config_path, recorded[1], config_sha256):
        return None
    saved = recorded[0]
    return (
        f"--out {out_dir} holds a run trained from {saved}; this run continues it with {config_path}. Its "
        "checkpoints are kept (retention deletes only this config's own); to start a new run pass another --out"
    )


def same_config_file(
    saved: Path, config_path: Path, saved_sha256: str | None = None, current_sha256: str | None = None
) -> bool:
    """Whether `saved`, the config file a run folder records (with the sha256 of its bytes then, if recorded), is
    `config_path` (whose bytes this process started from hash to `current_sha256`, if known). A preset is the same
    preset wherever ngpt_ds is installed (its path is that of the package's copy); any other file is the same file.

    A recorded absolute path that names nothing here was written on a node that mounts shared storage under
    another path (/gpfs/u/exp on one node, /home/u/exp on another): the paths never matched, so a requeue on the
    other node warned that --out holds another config's run, and retention kept every checkpoint of the run, a
    week of them. There, the same bytes are the same file; a file edited since still counts as another."""
    try:
        if config_path.resolve().parent == PRESET_DIR.resolve():
            return saved.name == config_path.name and saved.parent.name == PRESET_DIR.name
        if saved_sha256 is not None and saved.is_absolute() and not os.path.lexists(saved):
            return (current_sha256 or config_file_sha256(config_path)) == saved_sha256
        if saved.resolve() == config_path.resolve():
            return True
        # One file under two paths that do not resolve to each other (one storage bind-mounted at two points of a
        # node or container, a hard link): the same device and inode. By path alone it was another config.
        return os.path.exists(saved) and os.path.exists(config_path) and os.path.samefile(saved, config_path)
    except (OSError, RuntimeError, ValueError):  # a loop of links, a NUL byte in a record: compare as written
        return saved == config_path
