"""One writer per run folder: an exclusive lock on `<out>/train.lock`, held by rank 0 for the whole run.

Two trainers on the same --out would interleave checkpoints and metrics. The lock is a POSIX
record lock (`fcntl.lockf`), which works on local filesystems and on NFS, and which the kernel
releases when its process dies, whatever killed it. The file itself names the holder
(`host=... pid=...`) for the message a second trainer prints; a clean exit empties it, so a file
that still names a holder while the lock is free was left by a process that died: it is taken over
with a message. A checkpoints/ that is a link (a shared store) is locked too, by STORE_LOCK in the folder it
names (`_lock_checkpoints`): two --out linking there had both written into it.

Some filesystems give no locks at all: NFSv3 without a reachable lock daemon answers ENOLCK, Lustre
mounted without `flock` ENOSYS. There the trainer had said "--out ... is in use by another trainer" and
could not run. It now runs with a warning, and refuses only a holder the file names on this host that is
still running; a second trainer on another node is not detected there.

`acquire` is also the trainer's first write into --out, so it first refuses an --out the run would
damage or lose its work in (`check_out_folder`, ngpt_ds.train.out_folder): a checkpoint folder, another run's
checkpoints/, a prepared dataset, or a folder of someone else's files under the names the trainer replaces
(config.yaml, summary.json) or truncates (metrics.jsonl). Once locked, it refuses a checkpoints/ that cannot
take a new checkpoint (read-only, immutable, a link to nothing, a file), which had stopped the run at its first save.
A refused run leaves nothing behind: no train.lock or folder it created, no writer.lock in a folder it was refused.

POSIX record locks belong to a process, not to a descriptor: a second `acquire` in the process that holds a run's
locks is granted them again (two runs whose checkpoints/ link to one store are then not told apart), and closing
either descriptor drops both. No entry point does that: the trainer takes one run's locks per process (`lock_run`),
and `unless_in_use` runs before `lock_run`. Tests hold a lock in the test process and start the refused trainer
as a subprocess.
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

from ngpt_ds import log
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import out_moved
from ngpt_ds.train.checkpoint import CHECKPOINTS
from ngpt_ds.train.manifest import file_kind
from ngpt_ds.train.out_folder import LOCK_FILE, STORE_LOCK, check_out_folder
from ngpt_ds.train.out_shared import not_shared

_log = log.get(__name__)


def _holder() -> str:
    return f"host={socket.gethostname()} pid={os.getpid()}"


def _parse(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split() if "=" in part)


_HELD = "held by another process"


def _try_lock(fd: int, kind: int = fcntl.LOCK_EX) -> str | None:
    """Lock `fd` without waiting: None once locked, _HELD where another process holds the lock, else the error
    that says this filesystem gives no locks at all (lockf answers EAGAIN or EACCES for a held lock only)."""
    try:
        fcntl.lockf(fd, kind | fcntl.LOCK_NB)
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


def _still_named(fd: int, path: Path) -> bool:
    """`path` is still the file open as `fd` (a lock on a file removed since it was opened guards nothing)."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)


class RunLock:
    """The held lock. `release()` empties the file and unlocks (the file stays: unlinking a lock file races)."""

    def __init__(self, fd: int, path: Path, note: str | None, store_fd: int = -1):
        self.fd, self.path, self.store_fd, self.note = fd, path, store_fd, note
        """note: a line to print when a stale lock was taken over, else None."""

    def release(self) -> None:
        for fd in (self.store_fd, self.fd):  # the checkpoints folder's lock first: train.lock guards both
            if fd < 0:
                continue
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing drops the lock
        self.fd = self.store_fd = -1


def _open_lock(path: Path, subject: str, unwritable: str) -> int:
    """Open (create) the lock file `path`, never through a link; NgptConfigError naming `subject` when it cannot."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:  # a link planted in a run folder someone handed over: never written through
            raise NgptConfigError(
                f"{subject}: {path.name} is a symbolic link (to {os.readlink(path)}); the trainer writes its "
                f"name into {path.name} and would write through the link. Remove the link, then run again"
            ) from None
        raise NgptConfigError(f"{subject} is not writable ({err.strerror or err}){_fix(err, unwritable)}") from None
    kind = _not_regular(fd)
    if kind is not None:  # a named pipe or a device: its read below ended in a traceback ('Illegal seek')
        os.close(fd)
        raise NgptConfigError(
            f"{subject}: {path.name} is {kind}, not a regular file; the trainer locks {path.name} and writes "
            "its name into it. Remove it, then run again"
        )
    return fd


def _take(fd: int, path: Path, subject: str, busy_fix: str, no_locks: str, content: str) -> str | None:
    """Lock the open lock file `fd` and write `content` (the holder) into it. Returns the line to print (a stale
    lock taken over, a filesystem without locks: `no_locks`, where {failure} says why), else None. Closes `fd` and
    raises NgptConfigError naming `subject` and the holder when another process holds it."""
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
        raise NgptConfigError(f"{subject} is in use by another trainer ({holder}; lock file {path}). {busy_fix}")
    if not _still_named(fd, path):  # removed by a refused run that had created it (`_release_refused`)
        os.close(fd)
        raise NgptConfigError(
            f"{subject}: {path} was removed while this trainer took it (another trainer started there at the same "
            "moment and was refused). Run again"
        )
    note = None
    if failure:
        note = no_locks.replace("{failure}", failure)
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
        os.pwrite(fd, (content + "\n").encode(), 0)
        os.fsync(fd)
    except OSError as err:
        os.close(fd)
        raise NgptConfigError(f"{subject} is not writable ({err.strerror or err}){_fix(err)}") from None
    return note


def acquire(out_dir: Path) -> RunLock:
    """Create --out if needed and lock it, and the checkpoints folder its checkpoints/ links to
    (`_lock_checkpoints`). NgptConfigError when another process holds either, --out is not writable (read-only
    filesystem, permissions), or a run there would damage what it holds (`check_out_folder`)."""
    check_out_folder(out_dir)
    path = out_dir / LOCK_FILE
    made = [folder for folder in (out_dir, *out_dir.parents) if not os.path.lexists(folder)]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _remove_made(made)
        file = next((p for p in reversed(out_dir.parents) if p.exists() and not p.is_dir()), None)
        if file is not None:  # had been 'not writable (Not a directory)', naming neither the file nor the fix
            raise NgptConfigError(
                f"--out {out_dir} is below {file}, which is a file, not a folder. Move that file away, or "
                "choose another --out"
            ) from None
        raise NgptConfigError(f"--out {out_dir} is not writable ({err.strerror or err}){_fix(err)}") from None
    created = not os.path.lexists(path)
    try:
        fd = _open_lock(path, f"--out {out_dir}", _OUT_UNWRITABLE)
        lock = _lock_opened(out_dir, path, fd, created)
    except (NgptConfigError, OSError):  # an OSError (EIO) is lock_run's refusal too: it leaves nothing either
        _remove_made(made)
        raise
    if created and not out_dir.is_absolute():
        _say_where_a_relative_out_is(out_dir)
    return lock


BATCH_JOB_VARIABLES = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID")
"""Set by Slurm, PBS/Torque, LSF and Grid Engine in a batch job's environment."""


def _say_where_a_relative_out_is(out_dir: Path) -> None:
    """A requeue submitted from another folder than the first job (a new shell, an sbatch from elsewhere) ran "the
    same command" the summary suggests, found no run under the relative --out there, and trained from step 0 in a
    new folder without a word, the real run's checkpoints unused. In a batch job that is a warning; run by hand (the
    README's first command, with its default --out runs/<name>), one line saying where the run is."""
    where = f"{out_dir.absolute()}, from the working folder {Path.cwd()}"
    if any(os.environ.get(name) for name in BATCH_JOB_VARIABLES):
        _log.warning(
            f"warning: --out {out_dir} is relative: this new run is in {where}. Started from another working folder, "
            "the same command (a requeue, --resume auto) finds no run there and starts over from step 0 in another "
            "folder: pass an absolute --out"
        )
    else:
        _log.info(f"new run in {where} (--out {out_dir} is relative: the same command continues it from there)")


def _remove_made(folders: list[Path]) -> None:
    """A refused run leaves no folder it made: those of `folders` that are empty, the deepest first."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _release_refused(lock: RunLock, created: bool) -> None:
    """Release the train.lock of a run refused once it held it, and remove the file if this run created it (an
    empty one left behind marked the folder a run folder, which turned off the checks of the next run's --out).
    Removed while still held: a process that opened it meanwhile finds it held and is refused."""
    if created:
        with contextlib.suppress(OSError):
            lock.path.unlink()
    lock.release()


def _lock_opened(out_dir: Path, path: Path, fd: int, created: bool) -> RunLock:
    """`acquire` once train.lock is open: take it, then the checkpoints folder's lock."""
    busy_fix = "Wait for it to finish or stop it"
    no_locks = (
        f"warning: the filesystem of --out {out_dir} gives no file locks ({{failure}}): this run is not locked "
        "there, and a second trainer started on this --out from another node would not be refused. Start one "
        "trainer per --out"
    )
    note = _take(fd, path, f"--out {out_dir}", busy_fix + ", or choose another --out", no_locks, _holder())
    try:
        problem = _checkpoints_not_writable(out_dir / CHECKPOINTS)
        if problem is not None:
            raise NgptConfigError(problem)
        store_fd, store_note = _lock_checkpoints(out_dir)
    except (NgptConfigError, OSError):  # an OSError (EIO reading checkpoints/) is lock_run's refusal too: the
        # train.lock this run created and took goes with it (left, it named a dead process in a folder of nothing)
        _release_refused(RunLock(fd, path, None), created)
        raise
    return RunLock(fd, path, "\n".join(filter(None, (note, store_note))) or None, store_fd)


_OUT_UNWRITABLE = ": the trainer writes its checkpoints, logs and config there. Choose a writable --out"
_FULL = (
    ": its filesystem is full (or your disk quota there is spent). Free space there (or have the quota raised), then "
    "run the same command again"
)


def _fix(err: OSError, unwritable: str = _OUT_UNWRITABLE) -> str:
    """The fix for a lock file or --out that cannot be written. A full disk is no wrong --out: 'Choose a writable
    --out' had sent the user of a run whose disk filled up to another --out, where the same command starts over from
    step 0, the run's checkpoints unused."""
    return _FULL if err.errno in (errno.ENOSPC, errno.EDQUOT) else unwritable


def _held(path: Path) -> str | None:
    """Who holds the lock file `path` when another process does (its text), else None (no such file, free, or no
    regular file). Takes nothing; never on a file this process holds (closing a descriptor drops its locks)."""
    try:  # O_NONBLOCK: a named pipe there would block the open for good
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if _not_regular(fd) is not None:
            return None
        failure = _try_lock(fd, fcntl.LOCK_SH)
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if failure == _HELD or (failure and _running_here(_parse(text))):
            return text or "a process that has not written its name yet"
        return None
    finally:
        os.close(fd)


def _lock_checkpoints(out_dir: Path) -> tuple[int, str | None]:
    """Rank 0, holding train.lock: one writer per checkpoints folder too. Returns the descriptor of the lock it
    holds (-1: none) and a line to print, or raises NgptConfigError naming the folder and its holder.

    Two --out whose checkpoints/ are links to one folder (a shared checkpoint store, a run folder copied with
    `cp -a`, which keeps the link) had both run, each under its own train.lock, saving, rotating and deleting
    checkpoints in the same folder. A checkpoints/ that is a link now takes STORE_LOCK in the folder it names,
    the way train.lock is taken (a stale holder is taken over), and is refused while that folder is another
    run's own checkpoints/ and that run holds its train.lock. A checkpoints/ of the run's own (the common case)
    writes nothing there: it is refused while a STORE_LOCK in it is held (a run linking to it runs)."""
    checkpoints = out_dir / CHECKPOINTS
    if not checkpoints.is_dir():
        return -1, None  # the first save creates it, a folder of this run's own
    store, real_out = checkpoints.resolve(), out_dir.resolve()
    if store == real_out / CHECKPOINTS:
        holder = _held(store / STORE_LOCK)
        if holder is not None:
            raise NgptConfigError(
                f"--out {out_dir}: its checkpoints folder {store} is in use by another trainer, whose checkpoints/ "
                f"links there ({holder}; lock file {store / STORE_LOCK}). Wait for it to finish or stop it, or "
                "choose another --out"
            )
        return -1, None
    subject = f"--out {out_dir}: its checkpoints folder {store} (checkpoints/ links there)"
    path, busy_fix = store / STORE_LOCK, "Wait for it to finish or stop it, or give this run a checkpoints/ of its own"
    owner = store.parent / LOCK_FILE
    owned = store.name == CHECKPOINTS and store.parent != real_out

    def refuse_if_owner_runs() -> None:  # that run's own checkpoints/: it holds its train.lock only
        holder = _held(owner) if owned else None
        if holder is not None:
            raise NgptConfigError(
                f"{subject} is in use by the trainer of --out {store.parent} ({holder}; lock file {owner}). {busy_fix}"
            )

    # Asked before writer.lock is created: a refused run had left an empty one in the running run's checkpoints/
    refuse_if_owner_runs()
    created = not os.path.lexists(path)
    fd = _open_lock(path, subject, f": the trainer locks {path} there. Make it writable, or remove that file")
    no_locks = f"warning: the filesystem of {store} gives no file locks ({{failure}}): a second trainer whose "
    no_locks += "checkpoints/ links there from another node would not be refused"
    note = _take(fd, path, subject, busy_fix, no_locks, f"{_holder()} out={real_out}")
    try:
        refuse_if_owner_runs()  # again, now that writer.lock is held: that run may have started in between
    except NgptConfigError:
        if created:  # still held, so no other process locks it meanwhile
            with contextlib.suppress(OSError):
                path.unlink()
        RunLock(-1, path, None, fd).release()
        raise
    return fd, note


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
def unless_in_use(out_dir: Path, *, checkpoints: bool = True) -> Iterator[bool]:
    """Hold --out's lock for the duration of the block if no other process holds it, without creating or
    writing anything: yields True then (also when the folder has no lock file, so no trainer holds it),
    False when another process holds it (on a filesystem without locks: when the file names a running process of
    this host) or the lock file cannot be opened. For repairs before `lock_run`
    (resume.py puts back a checkpoint an interrupted save moved aside), which must not touch a folder a
    running trainer owns. Not while this process holds the lock: closing the file drops fcntl locks.
    `checkpoints`: the same for the locks of the folder <out>/checkpoints names (`_lock_checkpoints`), where a
    trainer of another --out whose checkpoints/ links there writes under its own train.lock."""
    with contextlib.ExitStack() as held:
        yield all(_hold_if_free(path, held) for path in _lock_files(out_dir, checkpoints))


def _lock_files(out_dir: Path, checkpoints: bool) -> list[Path]:
    """train.lock, then the lock files of the folder <out>/checkpoints names that `_lock_checkpoints` consults."""
    files, store = [out_dir / LOCK_FILE], out_dir / CHECKPOINTS
    if checkpoints and store.is_dir():
        store = store.resolve()
        files.append(store / STORE_LOCK)
        if store.name == CHECKPOINTS and store.parent != out_dir.resolve():
            files.append(store.parent / LOCK_FILE)
    return files


def _hold_if_free(path: Path, held: contextlib.ExitStack) -> bool:
    """Lock `path` until `held` closes, unless another process holds it (True also when there is no such file)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    held.callback(os.close, fd)
    if _not_regular(fd) is not None:  # no lock to take there; `acquire` refuses it with the fix
        return False
    failure = _try_lock(fd)
    # locked, or on a filesystem without locks (`acquire`) with no trainer of this host named
    return not (failure == _HELD or (failure and _running_here(_parse(os.pread(fd, 4096, 0).decode(errors="replace")))))


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
        except OSError as err:  # reading --out or its parents (EIO, EACCES): rank 0 alone had ended, the rest waited
            problem = (
                f"cannot check or lock --out {out_dir} ({err}): check that folder and its parents (permissions, the "
                "filesystem), or choose another --out"
            )
        else:  # the run's folder from now on, wherever an `mv` takes it: every line that meets a move can name it
            out_moved.hold(out_dir, anew=True)
    box = [problem]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise NgptConfigError(box[0])
    problem = not_shared(out_dir, LOCK_FILE, lock.fd if lock is not None else -1)
    if problem is not None:
        if lock is not None:
            lock.release()
        raise NgptConfigError(problem)
    if dist.get_rank() != 0:  # once they read rank 0's lock there (the same folder): held from the start, as on rank 0.
        # Held from their first save only, a move before it stopped them with 'No checkpoint was saved yet ...: running
        # the same command again starts from step 0' (the old place) where rank 0 named the new place
        out_moved.hold(out_dir, anew=True)
    return lock
