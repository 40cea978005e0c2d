"""One writer per run folder: an exclusive lock on `<out>/train.lock`, held by rank 0 for the whole run.

Two trainers on the same --out would interleave checkpoints and metrics. The lock is a POSIX
record lock (`fcntl.lockf`), which works on local filesystems and on NFS, and which the kernel
releases when its process dies, whatever killed it. The file itself names the holder
(`host=... pid=...`) for the message a second trainer prints; a clean exit empties it, so a file
that still names a holder while the lock is free was left by a process that died: it is taken over
with a message.

Some filesystems give no locks at all: NFSv3 without a reachable lock daemon answers ENOLCK, Lustre
mounted without `flock` ENOSYS. There the trainer had said "--out ... is in use by another trainer" and
could not run. It now runs with a warning, and refuses only a holder the file names on this host that is
still running; a second trainer on another node is not detected there.

`acquire` is also the trainer's first write into --out, so it first refuses an --out the run would
damage or lose its work in (`check_out_folder`): a checkpoint folder, another run's checkpoints/, a prepared
dataset, or a folder of someone else's files under the names the trainer replaces (config.yaml,
summary.json) or truncates (metrics.jsonl). Once locked, it refuses a checkpoints/ that cannot take a new
checkpoint (read-only, immutable, a link to nothing, a file), which had stopped the run at its first save.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch.distributed as dist

from ngpt_ds import yaml_safe
from ngpt_ds.data.shards import META_FILE as DATASET_META
from ngpt_ds.data.shards import TOKENIZER_FILE as DATASET_TOKENIZER
from ngpt_ds.errors import UNPARSABLE, NgptConfigError
from ngpt_ds.train.checkpoint import CHECKPOINTS
from ngpt_ds.train.manifest import COMPLETE, RefusedFile, file_kind, read_capped
from ngpt_ds.train.out_shared import not_shared

LOCK_FILE = "train.lock"
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
            (candidate.parent / LOCK_FILE).exists()
            or (candidate / "latest").is_file()
            or any(candidate.glob(f"step_*/{COMPLETE}"))
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


def check_out_folder(out_dir: Path) -> None:
    """Raise NgptConfigError for an --out the run would damage: inside a checkpoint (its config.yaml
    rewritten and new files added, it would fail its manifest), inside another run's checkpoints/ or a
    prepared dataset, a user's config.yaml, or a folder that is not a run folder (no train.lock, run
    config.yaml or checkpoint) holding a file under a name a run replaces or truncates."""
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
    if not real.is_dir():
        return
    config = real / RUN_CONFIG
    sections = _config_sections(config)
    ours = sections is not None and RUN_CONFIG_FIRST_KEY in sections  # RunConfig.to_yaml, not model/train
    run_folder = _is_run_folder(real)
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


def _holder() -> str:
    return f"host={socket.gethostname()} pid={os.getpid()}"


def _parse(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split() if "=" in part)


_HELD = "held by another process"


def _try_lock(fd: int) -> str | None:
    """Lock `fd` without waiting: None once locked, _HELD where another process holds the lock, else the error
    that says this filesystem gives no locks at all (lockf answers EAGAIN or EACCES for a held lock only)."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES):
            return _HELD
        return f"lockf: {err.strerror or err}"
    return None


def _running_here(holder: dict[str, str]) -> bool:
    """The lock file names a process on this host, other than this one, that is still running."""
    pid = holder.get("pid", "")
    return (
        holder.get("host") == socket.gethostname() and _is_number(pid) and int(pid) != os.getpid() and _alive(int(pid))
    )


def _is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit also takes other scripts' digits (a `pid=²` in the file), which int() refuses."""
    return text.isascii() and text.isdigit()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _not_regular(fd: int) -> str | None:
    """What the open lock file is when it is no regular file ('a named pipe', 'a device'), else None."""
    return file_kind(os.fstat(fd).st_mode)


class RunLock:
    """The held lock. `release()` empties the file and unlocks (the file stays: unlinking a lock file races)."""

    def __init__(self, fd: int, path: Path, note: str | None):
        self.fd, self.path = fd, path
        self.note = note
        """A line to print when a stale lock was taken over, else None."""

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        os.close(self.fd)  # closing drops the lock
        self.fd = -1


def acquire(out_dir: Path) -> RunLock:
    """Create --out if needed and lock it. NgptConfigError when another process holds it, --out is not
    writable (read-only filesystem, permissions), or a run there would damage what it holds
    (`check_out_folder`)."""
    check_out_folder(out_dir)
    path = out_dir / LOCK_FILE
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:  # a link planted in a run folder someone handed over: never written through
            raise NgptConfigError(
                f"--out {out_dir}: {LOCK_FILE} is a symbolic link (to {os.readlink(path)}); the trainer writes its "
                f"name into {LOCK_FILE} and would write through the link. Remove the link, then run again"
            ) from None
        raise NgptConfigError(
            f"--out {out_dir} is not writable ({err.strerror or err}): the trainer writes "
            "its checkpoints, logs and config there. Choose a writable --out"
        ) from None
    kind = _not_regular(fd)
    if kind is not None:  # a named pipe or a device: its read below ended in a traceback ('Illegal seek')
        os.close(fd)
        raise NgptConfigError(
            f"--out {out_dir}: {LOCK_FILE} is {kind}, not a regular file; the trainer locks {LOCK_FILE} and writes "
            "its name into it. Remove it, then run again"
        )
    failure = _try_lock(fd)
    text = os.pread(fd, 4096, 0).decode(errors="replace")
    previous = _parse(text)
    if failure == _HELD or (failure and _running_here(previous)):
        holder = text.strip() or "a process that has not written its name yet"
        os.close(fd)
        if failure != _HELD:
            holder += (
                f"; this filesystem gives no locks ({failure}), so the process the file names was looked up: "
                f"if it is not a trainer, empty {path}"
            )
        raise NgptConfigError(
            f"--out {out_dir} is in use by another trainer ({holder}; lock file {path}). Wait for "
            "it to finish or stop it, or choose another --out"
        ) from None
    note = None
    if failure:
        note = (
            f"warning: the filesystem of --out {out_dir} gives no file locks ({failure}): this run is not "
            f"locked there, and a second trainer started on this --out from another node would not be refused. "
            f"Start one trainer per --out"
        )
    elif "pid" in previous:
        same_host = previous.get("host") == socket.gethostname()
        dead = same_host and _is_number(previous["pid"]) and not _alive(int(previous["pid"]))
        if same_host and not dead and _running_here(previous):
            # the lock is free, yet the process it names runs: a train.lock copied with a run folder (cp -a, rsync)
            # from under a running trainer; it had been said to have ended without releasing its lock
            note = (
                f"took over {path}, which names host={previous['host']} pid={previous['pid']}: that process is "
                "still running but holds no lock here, so the file was copied from another run folder"
            )
        else:
            state = "no longer running" if dead else "its lock was released"
            note = (
                f"took over the stale lock of host={previous.get('host', '?')} pid={previous['pid']} ({state}; "
                "it ended without releasing it)"
            )
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (_holder() + "\n").encode(), 0)
        os.fsync(fd)
    except OSError as err:
        os.close(fd)
        raise NgptConfigError(
            f"--out {out_dir} is not writable ({err.strerror or err}). Choose a writable --out"
        ) from None
    problem = _checkpoints_not_writable(out_dir / CHECKPOINTS)
    if problem is not None:
        RunLock(fd, path, None).release()
        raise NgptConfigError(problem)
    return RunLock(fd, path, note)


def _checkpoints_not_writable(checkpoints: Path) -> str | None:
    """Why a new entry cannot be made in `<out>/checkpoints` (made read-only to keep it, immutable, a link to a
    read-only mount or to nothing, a file), else None. --out itself was writable, so the run trained a whole
    checkpoint_interval and then stopped at its first save (exit 74, 'writing .../step_N.tmp-save: Operation not
    permitted'), its training lost."""
    if checkpoints.is_symlink() and not checkpoints.exists():
        # the first save's mkdir failed on it with 'cannot prepare ...: File exists', after a checkpoint_interval
        return (
            f"{checkpoints} is a symbolic link to {os.readlink(checkpoints)}, which does not exist (storage not "
            "mounted on this node, or purged): every checkpoint of the run is saved there. Create that folder, or "
            "remove the link"
        )
    if checkpoints.exists() and not checkpoints.is_dir():
        return f"{checkpoints} is not a folder: every checkpoint of the run is saved there. Move it away"
    if not checkpoints.is_dir():
        return None  # created by the first save, in the writable --out
    try:
        probe = tempfile.mkdtemp(prefix=".ngpt_ds-write-test-", dir=checkpoints)
        os.rmdir(probe)
    except OSError as err:
        return (
            f"{checkpoints} is not writable ({err.strerror or err}): every checkpoint of the run is saved there, "
            f"and the first save would fail after train.checkpoint_interval steps. Make it writable (chmod u+w, "
            f"chattr -i), or run in a new --out with --resume {checkpoints}/step_N"
        )
    return None


@contextlib.contextmanager
def unless_in_use(out_dir: Path) -> Iterator[bool]:
    """Hold --out's lock for the duration of the block if no other process holds it, without creating or
    writing anything: yields True then (also when the folder has no lock file, so no trainer holds it),
    False when another process holds it (on a filesystem without locks: when the file names a running process of
    this host) or the lock file cannot be opened. For repairs before `lock_run`
    (resume.py puts back a checkpoint an interrupted save moved aside), which must not touch a folder a
    running trainer owns. Not while this process holds the lock: closing the file drops fcntl locks."""
    try:
        fd = os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        yield True
        return
    except OSError:
        yield False
        return
    try:
        if _not_regular(fd) is not None:  # no lock to take there; `acquire` refuses it with the fix
            yield False
            return
        failure = _try_lock(fd)
        if failure == _HELD or (failure and _running_here(_parse(os.pread(fd, 4096, 0).decode(errors="replace")))):
            yield False
            return
        yield True  # locked, or on a filesystem without locks (`acquire`) with no trainer of this host named
    finally:
        os.close(fd)


def lock_run(out_dir: Path) -> RunLock | None:
    """Collective: rank 0 takes the lock; every rank raises the same NgptConfigError if it could not.

    Called right after the process group starts and before any rank writes or builds anything, so
    the other ranks exit together instead of waiting for rank 0 in a later collective.
    """
    lock, problem = None, None
    if dist.get_rank() == 0:
        try:
            lock = acquire(out_dir)
        except NgptConfigError as err:
            problem = str(err)
    box = [problem]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise NgptConfigError(box[0])
    problem = not_shared(out_dir, LOCK_FILE, lock.fd if lock is not None else -1)
    if problem is not None:
        if lock is not None:
            lock.release()
        raise NgptConfigError(problem)
    return lock
