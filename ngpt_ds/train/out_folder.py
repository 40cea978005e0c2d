"""Refusing an --out the run would damage or lose its work in (`check_out_folder`, called by
ngpt_ds.train.run_lock.acquire before the trainer's first write, and by the dry run): a checkpoint folder,
another run's checkpoints/, a checkpoints folder of another name (a shared checkpoint store, a renamed copy of a
run's checkpoints/), a prepared dataset, or a folder of someone else's files under the names the trainer replaces
(config.yaml, summary.json) or truncates (metrics.jsonl); a folder inside another run's folder or inside a
checkpoints folder, or one holding run folders; a file or a link to nothing; `/`, the home folder or the top of a git
repository."""

from __future__ import annotations

import re
from pathlib import Path

from ngpt_ds import yaml_safe
from ngpt_ds.data.shards import META_FILE as DATASET_META
from ngpt_ds.data.shards import TOKENIZER_FILE as DATASET_TOKENIZER
from ngpt_ds.errors import UNPARSABLE, NgptConfigError
from ngpt_ds.train.checkpoint_layout import CHECKPOINTS, LATEST, complete_checkpoints, is_step_name
from ngpt_ds.train.manifest import COMPLETE, RefusedFile, read_capped

LOCK_FILE = "train.lock"
"""The run's lock file, which ngpt_ds.train.run_lock takes in --out: its presence marks a run folder."""
STORE_LOCK = "writer.lock"
"""In a checkpoints folder that a run's checkpoints/ links to (a shared checkpoint store; a run folder copied with
`cp -a`, which keeps the link): names the trainer that writes there (ngpt_ds.train.run_lock._lock_checkpoints).
Never a step_N name, so listings, retention, resume and export pass it by (ngpt_ds.train.checkpoint_layout)."""
RUN_CONFIG = "config.yaml"
"""The run's effective config, rewritten at every start (ngpt_ds.train.job)."""
RUN_FILES = (
    "metrics.jsonl",
    "summary.json",
    # DeepSpeed's save writes these beside the step folders: another trainer's DeepSpeed run folder (its
    # global_stepN/) had its `latest` tag and recovery scripts replaced by ngpt_ds's, without a word.
    "checkpoints/latest",
    "checkpoints/zero_to_fp32.py",
    "checkpoints/zero_to_torch.py",
)
"""What else a run replaces (summary.json) or truncates to the step it resumes from (metrics.jsonl:
everything, on a fresh start) in its --out (ngpt_ds.train.metrics, ngpt_ds.train.loop)."""
RUN_CONFIG_FIRST_KEY = "config_source"
"""The first line of every RunConfig.to_yaml since the first ngpt_ds (a user's config has only model:
and train:), so a copy cut short by a kill past that line is still recognised as the run's."""


LATEST_MAX_BYTES = 4096
"""The largest `latest` read as a tag pointer: DeepSpeed and ngpt_ds write one tag name there."""
DEEPSPEED_TAG = re.compile(r"global_step\d+")
"""The tag DeepSpeed's save_checkpoint names a save by when no tag is given."""

RUN_CONFIG_MAX_BYTES = 2**20
"""The largest config.yaml read in --out: the trainer writes a few KiB, and config files are read no further
than 1 MiB (ngpt_ds.train.config)."""


def _config_sections(config: Path) -> set[str] | None:
    """The top-level keys of a YAML mapping in `config`; None when it holds none (missing, empty,
    cut short by a kill while it was written, not YAML, or not (a link to) a regular file of at most
    RUN_CONFIG_MAX_BYTES: a named pipe there hung rank 0 at startup for good, without a line, and a link to
    /dev/zero was read until memory ran out)."""
    try:
        text = read_capped(config, RUN_CONFIG_MAX_BYTES).decode("utf-8", errors="replace")
        data = yaml_safe.safe_load(text)
    except (OSError, RefusedFile, yaml_safe.YAMLError, *UNPARSABLE):
        return None
    return {str(key) for key in data} if isinstance(data, dict) else None


def _names_a_tag(folder: Path) -> bool:
    """`folder`'s `latest` is a tag pointer as DeepSpeed and ngpt_ds write it: a regular file of at most
    LATEST_MAX_BYTES whose one line is step_N, DeepSpeed's global_stepN, or the name of a folder beside it. Any
    file named `latest` had counted: a project folder holding notes under that name was refused as a checkpoints
    folder, as --out and as a parent of --out. A named pipe is not opened (read_capped)."""
    try:
        tag = read_capped(folder / LATEST, LATEST_MAX_BYTES).decode("utf-8").strip()
    except (OSError, RefusedFile, UnicodeDecodeError):
        return False
    if is_step_name(tag) or DEEPSPEED_TAG.fullmatch(tag):
        return True
    if tag in ("", ".", "..") or "/" in tag or "\0" in tag:
        return False
    try:  # a name longer than the filesystem takes raises ENAMETOOLONG: no folder there
        return (folder / tag).is_dir()
    except OSError:
        return False


def _checkpoint_holding(folder: Path) -> Path | None:
    """`folder` or the folder above it that is a checkpoint (a COMPLETE marker next to DeepSpeed's
    model states, or a step_N name), else None."""
    for candidate in (folder, *folder.parents):
        if (candidate / COMPLETE).is_file() and (
            candidate.name.startswith("step_") or any(candidate.glob("*model_states.pt"))
        ):
            return candidate
    return None


def _checkpoints_folder_holding(folder: Path) -> Path | None:
    """`folder` or the folder above it that is a run's checkpoints/ (named so, in a run folder or holding
    a complete step_N or DeepSpeed's `latest`), else None."""
    for candidate in (folder, *folder.parents):
        if candidate.name == CHECKPOINTS and (
            _is_run_folder(candidate.parent) or _names_a_tag(candidate) or any(candidate.glob(f"step_*/{COMPLETE}"))
        ):
            return candidate
    return None


def _dataset_holding(folder: Path) -> Path | None:
    """`folder` or the folder above it that is a prepared dataset (launch/prepare_data.py writes its
    meta.json and tokenizer.model), else None."""
    for candidate in (folder, *folder.parents):
        if (candidate / DATASET_META).is_file() and (candidate / DATASET_TOKENIZER).is_file():
            return candidate
    return None


def _is_run_folder(folder: Path) -> bool:
    """A run's folder (or a copy of its checkpoints): the trainer's effective config.yaml, its lock file, or
    a complete checkpoint."""
    sections = _config_sections(folder / RUN_CONFIG)
    ours = sections is not None and RUN_CONFIG_FIRST_KEY in sections
    return ours or (folder / LOCK_FILE).exists() or any((folder / "checkpoints").glob(f"step_*/{COMPLETE}"))


def _checkpoints_held(folder: Path) -> str | None:
    """What `folder` itself holds that belongs in a checkpoints folder ('checkpoints step_00000002, latest'):
    complete step_N checkpoints (the oldest, a count and the newest when more than 3), DeepSpeed's `latest`, a
    STORE_LOCK; None when it holds none. A run folder holds them in its checkpoints/ only."""
    try:
        steps = [step.name for step in complete_checkpoints(folder)]
    except OSError:  # a folder this user may write but not list (mode -wx): its names are unknown
        steps = []
    if len(steps) > 3:
        steps = [steps[0], f"... ({len(steps) - 2} more)", steps[-1]]
    markers = [LATEST] if _names_a_tag(folder) else []
    markers += [STORE_LOCK] if (folder / STORE_LOCK).is_file() else []
    if not steps and not markers:
        return None
    return ("checkpoints " if steps else "") + ", ".join(steps + markers)


def check_out_folder(out_dir: Path) -> None:
    """Raise NgptConfigError for an --out the run would damage: inside a checkpoint (its config.yaml
    rewritten and new files added, it would fail its manifest), inside another run's checkpoints/ or a
    prepared dataset, a checkpoints folder of another name (step_N, `latest` or STORE_LOCK in it directly), a
    user's config.yaml, or a folder that is not a run folder (no train.lock, run config.yaml or checkpoint)
    holding a file under a name a run replaces or truncates; a file, a link to nothing, a folder too wide to be a
    run folder (`_refuse_too_wide`), or one nested in another run or a checkpoints folder (`_refuse_nested`)."""
    real = out_dir.expanduser().resolve()
    checkpoint = _checkpoint_holding(real)
    if checkpoint is not None:
        raise NgptConfigError(
            f"--out {out_dir} is inside the checkpoint {checkpoint}: a run there would rewrite its config.yaml "
            "and add files, and the checkpoint would then fail its manifest. --out is the run folder: pass "
            f"the run's own folder (or a new one) as --out, and --resume {checkpoint} to resume from it"
        )
    # A run started in another run's checkpoints/ trained from scratch among that run's checkpoints (where
    # `--resume` or the run folder was meant), and went with them when they were copied or deleted.
    checkpoints = _checkpoints_folder_holding(real)
    if checkpoints is not None:
        raise NgptConfigError(
            f"--out {out_dir} {'is' if checkpoints == real else 'is inside'} {checkpoints}, the checkpoints folder "
            f"of the run {checkpoints.parent}: "
            f"a run there would start from scratch among that run's checkpoints. --out is the run folder: pass "
            f"--out {checkpoints.parent} to continue that run, --resume {checkpoints}/step_N to start from one of "
            "its checkpoints, or a new folder outside it"
        )
    # In a dataset folder, the run's checkpoints and logs were deleted with the dataset by the next
    # `launch/prepare_data.py --out <it> --overwrite`. A run already there goes on (its requeues, its
    # resumes): --overwrite and --merge now refuse a dataset holding a run (ngpt_ds.overwrite).
    dataset = _dataset_holding(real)
    if dataset is not None and not _is_run_folder(real):
        raise NgptConfigError(
            f"--out {out_dir} {'is' if dataset == real else 'is inside'} the prepared dataset {dataset} "
            f"({DATASET_META}, {DATASET_TOKENIZER}): the run's checkpoints and logs there would be deleted with "
            f"the dataset when it is prepared again with --overwrite. Choose an --out outside {dataset}"
        )
    _refuse_not_a_folder(out_dir)
    if real.is_dir() and not _is_run_folder(real):
        _refuse_too_wide(out_dir, real)
        _refuse_holding_runs(out_dir, real)
    _refuse_nested(out_dir, real)
    if not real.is_dir():
        return
    config = real / RUN_CONFIG
    sections = _config_sections(config)
    ours = sections is not None and RUN_CONFIG_FIRST_KEY in sections  # RunConfig.to_yaml, not model/train
    run_folder = _is_run_folder(real)
    # A checkpoints folder of another name (a shared store that runs' checkpoints/ link to, a run's checkpoints/
    # copied elsewhere): a fresh run there wrote its files and a checkpoints/ of its own beside the step_N folders,
    # which a --resume of that folder as a run never looks at. A run already started there goes on.
    held = None if run_folder else _checkpoints_held(real)
    if held is not None:
        raise NgptConfigError(
            f"--out {out_dir} holds {held} directly: it is a checkpoints folder, not a run folder (a run keeps its "
            f"checkpoints in <out>/{CHECKPOINTS}/); a fresh run there would write its config, logs and a "
            f"{CHECKPOINTS}/ of its own beside them, and a later --resume of that folder would not see them. --out "
            f"is the run folder: pass the run folder whose {CHECKPOINTS}/ this is as --out, --resume "
            f"{out_dir}/step_N to start from one of them, or a new folder"
        )
    # In a run folder, a config.yaml that holds no mapping is the run's own, cut short by a kill.
    if config.exists() and not ours and (sections is not None or not run_folder):
        raise NgptConfigError(
            f"--out {out_dir} holds a {RUN_CONFIG} the trainer did not write ({config} is not a run's "
            f"effective config); a run writes its effective config there and would replace that file. "
            f"Choose another --out (a config kept next to its runs: --out {out_dir}/<run name>)"
        )
    if run_folder:
        return  # a run folder (or a copy of its checkpoints): the trainer's own files
    theirs = [name for name in RUN_FILES if (real / name).exists() or (real / name).is_symlink()]
    if theirs:
        raise NgptConfigError(
            f"--out {out_dir} is not a run folder (no {LOCK_FILE}, no run {RUN_CONFIG}) but holds "
            f"{', '.join(theirs)}, which a run would replace or truncate. Choose another --out"
        )


def _refuse_not_a_folder(out_dir: Path) -> None:
    """--out a file, or a link to nothing (storage not mounted, a purged target): creating the run folder there
    failed with '--out ... is not writable (File exists)', which named neither the file nor the fix."""
    given = out_dir.expanduser()
    if given.is_symlink() and not given.exists():
        raise NgptConfigError(
            f"--out {out_dir} is a symbolic link to {given.readlink()}, which does not exist (storage not mounted on "
            "this node, or removed): the run folder is created there. Create that folder, or pass another --out"
        )
    if given.exists() and not given.is_dir():
        raise NgptConfigError(
            f"--out {out_dir} is a file, not a folder: --out is the run folder, where the trainer writes its "
            f"checkpoints, logs and config. Pass a folder (a new one: --out {out_dir}.run)"
        )


def _refuse_too_wide(out_dir: Path, real: Path) -> None:
    """--out `/`, the home folder, or the top of a git repository (`--out .` in a clone; `--out "$DIR/$NAME"`
    with NAME unset): the run wrote config.yaml, metrics.jsonl, summary.json and checkpoints/ among everything
    there, and the next run pointed there by the same slip resumed this one's checkpoints. A run already there
    goes on (`check_out_folder` calls this for folders that are no run folder)."""
    what = None
    if real == Path(real.anchor):
        what = "the root of the filesystem"
    elif real == Path.home().resolve():
        what = "your home folder"
    elif (real / ".git").exists():
        what = "the top of a git repository (its .git is there)"
    if what is not None:
        raise NgptConfigError(
            f"--out {out_dir} is {what}: --out is the run folder, where a run writes its config.yaml, logs and "
            f"{CHECKPOINTS}/ among what is there. Pass a folder for this run (--out {real / 'runs' / '<name>'}); an "
            'empty shell variable in --out "$DIR/$NAME" leaves its parent'
        )


def _refuse_holding_runs(out_dir: Path, real: Path) -> None:
    """--out a folder of runs (`--out runs` for `--out runs/x`, the README's layout): the new run was started around
    them, so that they were copied, moved and deleted with it (`rm -rf` of the mistaken run), and every new run
    beside them was then refused as nested in it (`_refuse_nested`). A run already there goes on (`check_out_folder`
    calls this for folders that are no run folder)."""
    try:
        runs = sorted(entry.name for entry in real.iterdir() if entry.is_dir() and _holds_a_run(entry))
    except OSError:  # a folder this user may write but not list: its runs are unknown
        return
    if not runs:
        return
    names = ", ".join(runs[:3]) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
    raise NgptConfigError(
        f"--out {out_dir} holds the run folder(s) {names}: it is a folder of runs, not a run folder. A run there "
        "would hold them in its own folder (copied, moved and deleted with it), and new runs beside them would be "
        f"refused as nested in it. Pass a folder for this run (--out {out_dir}/<name>), or --out {out_dir}/{runs[0]} "
        "to continue that run"
    )


def _refuse_nested(out_dir: Path, real: Path) -> None:
    """--out inside a checkpoints folder of another name (a shared checkpoint store: step_N/ or STORE_LOCK in it
    directly), or inside another run's folder (`runA/sub`, often a relative --out given from inside runA): the
    run's folder was then copied, moved, exported and deleted with the other one, and a checkpoint store's
    readers met a run among its checkpoints. A run already there goes on; a folder holding runs (`runs/`) is
    no run folder, and runs in it are accepted; so is a run below `/` or the home folder that an earlier run used
    as its folder."""
    if _is_run_folder(real):
        return
    wide = (Path(real.anchor), Path.home().resolve())  # a run there from before `_refuse_too_wide` holds no others
    for parent in real.parents:
        if _holds_a_run(parent) and parent not in wide:
            raise NgptConfigError(
                f"--out {out_dir} is inside the run folder {parent}: the new run would be copied, moved and deleted "
                f"with that run. Pass a folder beside it (--out {parent.parent / real.name}), or --out {parent} "
                "to continue that run"
            )
        held = _checkpoints_held(parent)
        if held is not None:
            raise NgptConfigError(
                f"--out {out_dir} is inside {parent}, a checkpoints folder (it holds {held} directly): a run "
                f"there would put its files among those checkpoints. Pass a folder outside it, and --resume "
                f"{parent}/step_N to start from one of them"
            )


def _holds_a_run(folder: Path) -> bool:
    """A run's folder that a run worked in: its run config.yaml, a complete checkpoint, or a train.lock naming a
    holder. An empty train.lock alone is a start that wrote nothing else (a clean exit empties it, but a run writes
    its config.yaml first), which leaves no run to nest in."""
    sections = _config_sections(folder / RUN_CONFIG)
    if (sections is not None and RUN_CONFIG_FIRST_KEY in sections) or any(
        (folder / CHECKPOINTS).glob(f"step_*/{COMPLETE}")
    ):
        return True
    try:
        return read_capped(folder / LOCK_FILE, 4096).strip() != b""
    except (OSError, RefusedFile):
        return False
