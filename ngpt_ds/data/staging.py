"""Hidden staging folders beside a dataset (or part) being written, renamed into place when complete.

Each staging folder holds a lock file (`.owner`) locked by the process writing it for as long as it
lives. A preparation killed mid-write (SIGKILL, the node lost, the job's time limit) left its staging
folder behind, hidden, with every shard it had written, and each rerun left another: a 500 GB corpus
killed twice held 1 TB of disk no one could see. A folder whose lock nobody holds is abandoned; the next
preparation of the same folder removes it. One still locked belongs to a preparation under way and is left
alone; a second preparation of the same folder started meanwhile (another shell, a Slurm array with one index
twice) is refused before it reads its corpus (`refuse_under_way`): it used to tokenize the whole corpus, hours,
and only then stop at publishing. The lock file names its process (pid and host) for that message.

Replacing an existing folder (`swap_in`, --overwrite) exchanges the two names in one renameat2(RENAME_EXCHANGE)
call on Linux, so the folder's name always holds a complete dataset. Where that call is missing (another OS, a
filesystem that answers EINVAL) it takes two renames, the old folder first set aside as `.<name>.old-<id>`: a
kill between them left no folder under the name and the old dataset hidden. The next preparation of that
folder puts such a copy back before it writes anything (`restore_set_aside`), and the loader names it.

Where flock stays on one node (Lustre mounted with `localflock`, NFS with `local_lock=flock`), the lock of a
folder another node is writing looks free: a preparation of the same output on node B took node A's live staging
folder for abandoned and deleted it under A. A free lock is trusted only on the host its lock file names (or where
it names none); another host's folder is removed only once nothing in it has changed for OTHER_HOST_IDLE_S, and
until then left with a warning naming that host and how to remove it by hand. Nor then while its writer's
heartbeat goes on (ngpt_ds.data.staging_beat): a host whose clock ran a day ahead had removed a live one. One of
this host's name whose heartbeat names another boot goes only once that heartbeat stays still (staging_beat).

A new folder takes its name with renameat2(RENAME_NOREPLACE), which never replaces anything: two jobs writing
one new folder at once (on one node or several, where flock may not reach), the second to finish stops with an
NgptConfigError and the first's folder stays as it is. os.replace there gave the second a raw OSError, or,
where the name held an empty folder, replaced it without a word.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shlex
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from ngpt_ds import log
from ngpt_ds.data import staging_beat
from ngpt_ds.errors import NgptConfigError

_log = log.get(__name__)

OWNER_FILE = ".owner"
_held: dict[Path, int] = {}  # staging folder -> descriptor of its locked OWNER_FILE
_beats: dict[Path, int | None] = {}  # staging folder -> descriptor of its beat file (staging_beat)

OTHER_HOST_IDLE_S = 24 * 3600
"""A staging folder whose lock file names another host, and whose lock looks free here, is removed only once
nothing in it (the folder, its files: their mtime and ctime) has changed for this long. A live preparation writes
a shard every few minutes and its last step, hashing, takes minutes per 100 GB; a day is far beyond both and
beyond any clock difference between nodes, and still bounds how long a dead one's shards hold the disk."""
_OWNER_LINE = re.compile(r"pid [0-9]+ on (.+)")
_now = time.time  # the clock an idle folder's age is counted on (tests move it)


def _name(final: Path) -> str:
    return f".{final.name}.partial-"


def _lock(path: Path, create: bool) -> int | None:
    """A descriptor holding an exclusive lock on `path`, or None where another process holds it. OSError where
    the filesystem has no flock (Lustre mounted without it answers ENOSYS), the descriptor closed."""
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    return fd


def _others(final: Path) -> Iterator[tuple[Path, int | None]]:
    """The staging folders of `final` this process does not hold, each with a descriptor holding its lock
    (abandoned: the caller closes it) or None (a live process holds it: a preparation under way)."""
    for folder in sorted(final.parent.glob(_name(final) + "*")):
        owner = folder / OWNER_FILE
        if folder in _held or not folder.is_dir() or folder.is_symlink() or not owner.is_file():
            continue  # ours, not a staging folder, or one of an ngpt_ds that kept no lock: not ours to judge
        try:
            fd = _lock(owner, create=False)
        except OSError:  # gone meanwhile (published or removed), or a filesystem without locks
            continue
        yield folder, fd


def _staging_states(final: Path) -> tuple[list[Path], list[Path]]:
    """(staging folders of `final` a live process holds, those abandoned), left as they are."""
    busy, abandoned = [], []
    for folder, fd in _others(final):
        if fd is None:
            busy.append(folder)
        else:
            os.close(fd)
            abandoned.append(folder)
    return busy, abandoned


def under_way(final: Path) -> list[Path]:
    """The staging folders of `final` whose lock a live process holds: preparations of it under way."""
    return _staging_states(final)[0]


def _owner_line(folder: Path) -> str:
    """'pid N on HOST' of the process holding staging `folder`, as its lock file records it, or ''."""
    try:
        with open(folder / OWNER_FILE, "rb") as f:
            line = f.read(200).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    # Shown in warnings and errors: a control character (a terminal escape in a crafted lock file, a cut line's
    # newline) is written as its escape, never sent to the terminal as it is.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)


def _owner(folder: Path) -> str:
    """' (pid N on HOST)' of the process holding staging `folder`, as its lock file records it, or ''."""
    owner = _owner_line(folder)
    return f" ({owner})" if owner else ""


def _other_host(folder: Path) -> str | None:
    """The host the lock file of `folder` names when it is not this one, else None (this host, or none named: a
    full disk left the line empty, and the lock alone, trusted as before, judges the folder)."""
    found = _OWNER_LINE.fullmatch(_owner_line(folder))
    if found is None or found.group(1) == socket.gethostname():
        return None
    return found.group(1)


def _idle_s(folder: Path) -> float:
    """Seconds since anything in `folder` last changed: the newest mtime or ctime of the folder and of everything
    in it (ctime too: the merge's hard links keep a shard's mtime and change its ctime). Negative where a clock
    differs; 0 when the folder cannot be read (judged busy)."""
    newest = 0.0
    try:
        for root, dirs, files in os.walk(folder, onerror=_raise):
            for name in (".", *dirs, *files):
                st = os.lstat(os.path.join(root, name))
                newest = max(newest, st.st_mtime, st.st_ctime)
    except OSError:
        return 0.0
    return _now() - newest


def _last_change(idle: float) -> str:
    """When a staging folder last changed, `idle` seconds ago: a negative age (its files dated ahead of this host's
    clock, by another node's clock or a `touch -d`) had read 'last change 0.0 h ago', which is not why it stays."""
    if idle >= 0:
        return f"last change {idle / 3600:.1f} h ago"
    return (
        f"its last change is dated {-idle / 3600:.1f} h ahead of this host's clock: the clocks differ, and its "
        "age is counted from then"
    )


def _raise(err: OSError) -> None:
    raise err


def refuse_under_way(final: Path, option: str = "--out") -> None:
    """NgptConfigError when another process is writing `final` now (its staging folder is locked), before this
    one reads or writes anything. Checked before this process makes its own staging folder, so of two started
    together one goes on; two that check at the same instant both go on, and the second to finish is refused at
    publishing (`swap_in`), as where flock does not reach other nodes."""
    busy = under_way(final)
    if not busy:
        return
    raise NgptConfigError(
        f"{option} {final} is being written by another process now{_owner(busy[0])}: its staging folder {busy[0].name} is "
        "locked. Wait for it to finish (then pass --overwrite to replace what it wrote), or stop it and run this "
        "again; two at once would each do the whole work and the second be refused at the end"
    )


def remove_abandoned(final: Path) -> list[Path]:
    """Remove the staging folders of `final` left by preparations that are gone; return them. A free lock is
    trusted on this host only: another host's folder goes once idle for OTHER_HOST_IDLE_S, and is left with a
    warning until then, or while its beat file changes (staging_beat: read twice, WATCH_S apart)."""
    removed, judged = [], []
    try:
        for folder, fd in _others(final):
            if fd is None:
                continue  # a preparation under way
            host, idle = _other_host(folder), 0.0
            if host is not None and (idle := _idle_s(folder)) < OTHER_HOST_IDLE_S:
                os.close(fd)
                _log.warning(
                    f"left {folder}: its lock is free here, but it was made on {host} ({_owner_line(folder)}), "
                    "and where file locks stay on one node (Lustre localflock, NFS local_lock=flock) that "
                    f"preparation may still be writing it ({_last_change(idle)}). It is "
                    f"removed once unchanged for {OTHER_HOST_IDLE_S / 3600:g} h; if that process is gone, remove "
                    # Quoted: the folder is named after the dataset ('my corpus', a '$(...)'), and the line is pasted.
                    f"it now: rm -r {shlex.quote(str(folder))}"
                )
                continue
            judged.append((folder, fd, host, idle))
        # This host's clock alone said "a day idle": one a day ahead of the writer's says so of a live folder.
        watched = [f for f, _, h, _ in judged if (h or staging_beat.other_boot(f)) and staging_beat.read(f) is not None]
        alive = staging_beat.still_beating(watched)
        for folder, _, host, idle in judged:
            if folder in alive and host is None:
                _log.warning(
                    f"left {folder}: its lock is free here and it names this host's name "
                    f"({_owner_line(folder)}), but its heartbeat ({staging_beat.BEAT_FILE}) names another boot "
                    f"({staging_beat.other_boot(folder)}, this one is {staging_beat.BOOT_ID}) and changed within "
                    f"{staging_beat.WATCH_S:g} s: another machine of the same host name is still writing it. Give "
                    "the nodes distinct host names (a container's --hostname), or wait for it to finish"
                )
                continue
            if folder in alive:
                _log.warning(
                    f"left {folder}: its lock is free here and by this host's clock nothing in it changed for "
                    f"{idle / 3600:.1f} h, but its heartbeat ({staging_beat.BEAT_FILE}) changed within "
                    f"{staging_beat.WATCH_S:g} s: the preparation on {host} ({_owner_line(folder)}) is still writing "
                    f"it, and this host's clock is likely ahead of {host}'s (compare `date -u` on both)"
                )
                continue
            shutil.rmtree(folder, ignore_errors=True)
            on = "" if host is None else f" on {host}, unchanged for {idle / 3600:.1f} h"
            _log.warning(f"removed {folder}: left by an interrupted preparation of {final}{on}")
            removed.append(folder)
    finally:
        for _, fd, _, _ in judged:
            os.close(fd)
    return removed


def staging_dir(final: Path) -> Path:
    """A new empty hidden folder beside `final` (`.<name>.partial-<id>`), locked by this process, to be
    renamed into it by `swap_in`. Abandoned ones of `final` are removed first, and a copy of `final` a killed
    replacement set aside is put back or, where `final` exists, deleted (`restore_set_aside`)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    restore_set_aside(final)
    remove_abandoned(final)
    staging = final.parent / f"{_name(final)}{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    unnamed = staging / (OWNER_FILE + ".new")
    fd = None
    try:
        # Locked before it has its name: a folder whose OWNER_FILE is unlocked is always abandoned.
        fd = _lock(unnamed, create=True)
        if fd is not None:
            # Who holds it, named by refuse_under_way. A full disk (ENOSPC, EDQUOT) had left the lock open and
            # the folder without OWNER_FILE, so no later run ever judged it abandoned: the lock alone is enough.
            with contextlib.suppress(OSError):
                os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
            _beats[staging] = staging_beat.start(staging)  # beating before the lock file has its name
            os.rename(unnamed, staging / OWNER_FILE)
            _held[staging] = fd
    except OSError:
        # A filesystem without flock: the folder is only never judged abandoned. The unlocked file goes, or
        # it would be published inside the dataset.
        if fd is not None and _held.get(staging) != fd:
            os.close(fd)
            staging_beat.stop(_beats.pop(staging, None))
            (staging / staging_beat.BEAT_FILE).unlink(missing_ok=True)
        unnamed.unlink(missing_ok=True)
    return staging


def _release(staging: Path, renamed_to: Path | None = None) -> None:
    """Delete the lock file of `staging` (now at `renamed_to` if given), which is not part of the dataset, and unlock."""
    staging_beat.stop(_beats.pop(staging, None))
    fd = _held.pop(staging, None)
    if fd is not None:
        ((renamed_to or staging) / staging_beat.BEAT_FILE).unlink(missing_ok=True)
        ((renamed_to or staging) / OWNER_FILE).unlink(missing_ok=True)
        os.close(fd)


def remove_staging(staging: Path) -> None:
    """Remove a staging folder that was not published (an error, or Ctrl-C)."""
    staging_beat.stop(_beats.pop(staging, None))
    fd = _held.pop(staging, None)
    if staging.exists():
        shutil.rmtree(staging, ignore_errors=True)
    if fd is not None:
        os.close(fd)


_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2  # linux/fs.h
_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP)


def _load_renameat2() -> Callable[..., int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


def _rename_with(a: Path, b: Path, flags: int) -> bool:
    """renameat2(a, b, flags): False where this OS, libc or filesystem lacks the call or the flag, OSError for
    any other failure."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def exchange(a: Path, b: Path) -> bool:
    """Swap the names of `a` and `b` in one step (renameat2 RENAME_EXCHANGE); False where this OS, libc or
    filesystem cannot (the caller then takes two renames), OSError for any other failure."""
    return _rename_with(a, b, _RENAME_EXCHANGE)


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`, a name that must be free: FileExistsError (or ENOTEMPTY) where anything holds it,
    an empty folder included (renameat2 RENAME_NOREPLACE). Where that call is missing, a check, then os.rename,
    which still refuses a folder that is not empty; an empty one made between the two is replaced."""
    if _rename_with(src, dst, _RENAME_NOREPLACE):
        return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(src), None, str(dst))
    os.rename(src, dst)


@contextlib.contextmanager
def _swap_lock(parent: Path) -> Iterator[None]:
    """Hold an exclusive flock on the folder holding the dataset while names in it are swapped or put back,
    so `restore_set_aside` never sees the name empty between a live swap's two renames. Without flock (some
    network filesystems) it holds nothing: at worst that swap then fails on a name put back meanwhile."""
    try:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# A whole uuid4: names are deleted (or renamed to the dataset) on their pattern alone, and 8 hex digits also
# match a person's dated backup, `.ds.old-20261201`, which the next preparation of `ds` then deleted.
_TAG_CHARS = 32


def _leftovers(final: Path, kind: str) -> list[Path]:
    """The `.<name>.<kind>-<id>` folders beside `final` (kind "old": an old copy a replacement moved out of
    the name; "new": a complete replacement renamed out of its staging name by a swap that was killed)."""
    pattern = re.compile(re.escape(f".{final.name}.{kind}-") + f"[0-9a-f]{{{_TAG_CHARS}}}")
    try:
        names = list(final.parent.iterdir())
    except OSError:  # no folder, or one that may be entered but not listed (mode 0711, as many home folders)
        return []  # nothing to find: the caller's own message (e.g. "does not exist; prepare it") stands
    return sorted(p for p in names if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink())


def set_aside(final: Path) -> list[Path]:
    """The old copies of `final` that replacements moved aside (`.<name>.old-<id>`)."""
    return _leftovers(final, "old")


def missing_hint(final: Path) -> str:
    """For an error saying `final` does not exist: what a killed --overwrite set aside there, a preparation of it
    under way or one that died (their staging folders), or ''."""
    copies = set_aside(final)
    if len(copies) == 1:
        return f"but {copies[0].name} is the copy a killed --overwrite set aside: mv it back (mv {copies[0]} {final})"
    if copies:
        return (
            f"but {', '.join(c.name for c in copies)} are copies killed replacements set aside: mv the one to keep back"
        )
    # A run started before its data was ready (a training job submitted with its preparation) was told to
    # prepare a dataset being prepared, or one whose preparation had died, with no word of either.
    busy, abandoned = _staging_states(final)
    if busy:
        return (
            f"but a preparation of it is under way{_owner(busy[0])}, writing {busy[0].name} beside it: wait for it to "
            "finish (the folder appears only when complete), then start again"
        )
    if abandoned and (host := _other_host(abandoned[0])) is not None:
        return (
            f"but {abandoned[0].name} beside it is a preparation of it started on {host}{_owner(abandoned[0])}: "
            "wait for it if it still runs there (the folder appears only when complete), or run it again"
        )
    if abandoned:
        return (
            f"but {abandoned[0].name} beside it is what an interrupted preparation of it left (it never finished): "
            "run that preparation again (it removes the leftover first)"
        )
    return ""


def restore_set_aside(final: Path) -> list[Path]:
    """Before a preparation of `final` writes anything: when `final` is missing and one set-aside copy of it
    exists (a replacement killed between its two renames), rename that copy back, and say so; when `final`
    exists, delete the set-aside copies (a replacement killed while deleting the old folder). Returns the
    copies deleted. Raises NgptConfigError where several copies and no `final` leave which to keep unclear."""
    with _swap_lock(final.parent):  # held by every live swap: what is found here was left by dead ones
        copies, unused = set_aside(final), _leftovers(final, "new")
        if copies and not final.exists() and not final.is_symlink():
            if len(copies) > 1:
                raise NgptConfigError(f"--out {final} does not exist, {missing_hint(final)}, or delete them")
            try:
                os.rename(copies[0], final)
            except OSError:
                # Another process put it back (or published `final`) first: where flock does not reach other
                # nodes (some network filesystems), the parts of one dataset start together on several.
                if not os.path.lexists(final):
                    raise
                copies = set_aside(final)  # what is left is deleted, as beside any existing `final`
            else:
                _log.warning(
                    f"put {final} back: {copies[0].name} held it, set aside by an --overwrite killed before "
                    "the new one took its name"
                )
                copies = []
    for old in copies + unused:  # past the lock: no swap ever uses these names again
        shutil.rmtree(old, ignore_errors=True)
        _log.warning(f"removed {old}: a copy of {final} left by an interrupted --overwrite")
    return copies + unused


def publish_target(out: str | Path, option: str = "--out") -> Path:
    """`out` as a folder to publish into with `swap_in`: absolute, so that `.` and `..` name a folder (a rename
    into `.` fails with EBUSY, after all the work), and not a symbolic link, which the rename would replace
    instead of filling the folder it points to. NgptConfigError for a link, before anything is written."""
    path = Path(os.path.abspath(out))
    if path.is_symlink():
        raise NgptConfigError(
            f"{option} {out} is a symbolic link (to {os.readlink(path)}): the output is written beside it and renamed "
            "into its name, which would replace the link instead of filling the folder it points to. Pass that "
            "folder itself, or another path"
        )
    return path


def swap_in(staging: Path, final: Path, *, overwrite: bool = True) -> None:
    """Rename the complete `staging` to `final`; an existing `final` (with `overwrite`: the caller checked that
    it may be replaced) is exchanged with it in one step (or, where the OS cannot, renamed aside first) and
    deleted after: `final` always names a complete folder, and whatever a kill leaves under another name,
    `restore_set_aside` puts back or removes. A `final` another job made while this one was writing (found here
    without `overwrite`, or taking the name during the rename) is never replaced: NgptConfigError, and
    `staging` is removed, as after any error. A symbolic link or a file at `final` is never replaced either.

    Both paths first rename `staging`, still locked, to `.<name>.new-<id>`: a kill after its lock file is
    deleted then leaves a name `restore_set_aside` removes, where an unlocked staging folder without a lock file
    was never judged abandoned, and stayed (a whole dataset's size) for good."""
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        what = "a symbolic link" if final.is_symlink() else "a file"
        raise NgptConfigError(f"{final} is {what}, not a folder: it is left as it is and this job's output removed")
    replacing = overwrite and final.exists()
    with _swap_lock(final.parent):  # held by every live swap: restore_set_aside takes no `new` for a dead one's
        tag = uuid.uuid4().hex  # _TAG_CHARS: never a name a person gives a backup
        new, old = final.parent / f".{final.name}.new-{tag}", final.parent / f".{final.name}.old-{tag}"
        os.replace(staging, new)  # still holding its lock file: a kill now leaves a name the next run removes
        _release(staging, renamed_to=new)
        try:
            if not replacing:
                rename_noreplace(new, final)
            elif exchange(new, final):
                os.replace(new, old)
            else:
                os.replace(final, old)
                os.replace(new, final)
        except OSError as e:
            if replacing and not os.path.lexists(final) and old.is_dir():
                os.replace(old, final)
            shutil.rmtree(new, ignore_errors=True)
            if replacing or (e.errno not in (errno.EEXIST, errno.ENOTEMPTY) and not os.path.lexists(final)):
                raise
            again = "run again to replace it" if overwrite else "run again with --overwrite to replace it"
            raise NgptConfigError(
                f"{final} appeared while this job was writing it (another job with the same --out finished "
                f"first, or made the folder); it is left as it is and this job's output removed: {again}, or "
                "choose another --out"
            ) from None
    shutil.rmtree(old, ignore_errors=True)
