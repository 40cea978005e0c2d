"""metrics.jsonl's records on resume: the records after the resumed step move to metrics.replaced.jsonl, and
whatever a crash or a bad disk left in the file is dropped; and the appends of the run's records, never through a
link. Kept apart from ngpt_ds.train.metrics (which measures and logs the scalars), which had grown to its size
limit."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

from ngpt_ds import log
from ngpt_ds.errors import UNPARSABLE
from ngpt_ds.train.manifest import RefusedFile, file_kind, fsync_dir, open_regular, read_capped
from ngpt_ds.train.summary import lines_of, records_if_readable, replace_file

_log = log.get(__name__)


REPLACED_JSONL = "metrics.replaced.jsonl"
"""Beside metrics.jsonl: the records a resume dropped from it, as they were, oldest resume first."""


def truncate_jsonl(path: Path, last_step: int) -> list[int]:
    """Keep the records of steps <= last_step. The records of later steps are appended to REPLACED_JSONL
    first: they are what a run that was killed, stopped without a checkpoint or diverged after its newest
    checkpoint logged, and the resume trains those steps again, maybe otherwise (another lr). Returns the
    steps of the records moved there.

    The file is read a line at a time, from where the last resume found records only (CHECKED_FILE), and changed
    only when something goes: later records, or bytes a crash or a bad disk left (NUL padding, garbage, a line cut
    short or of gigabytes), which are dropped instead of stopping the resume. When only its end goes, it is cut in
    place; otherwise rewritten (atomically: a copy renamed over it, with its permission bits). Memory holds one line:
    the kept lines had been held three times over, gigabytes at each resume of a long run. A file kept whole
    stays in place, so a `tail -f` of it goes on following the run, unless it has other hard links (a run
    folder copied with `cp -al`), whose appends would reach the other folder's file.

    Both files are written as regular files of the run folder, never through a link (`replace_file`,
    `append_record`): a link at either name (a run folder copied as links, `cp -rs`; or one planted in a folder
    someone handed over) is replaced by a regular file holding the records read through it, and whatever it
    names is left as it was. A named pipe or a device there is replaced unread. metrics.jsonl's link had been
    appended through by every log line, and a link to nothing had the file it names created."""
    if not os.path.lexists(path):
        return []
    irregular = _irregular(path)
    steps: list[int] = []
    kept_records = 0
    stepless: list[int] = []  # the line numbers of records without an integer step (hand-edited: "12", 12.5, null)
    with (
        tempfile.TemporaryFile(dir=path.parent) as kept,
        tempfile.TemporaryFile(dir=path.parent) as dropped,
        contextlib.ExitStack() as stack,
    ):
        try:
            source = stack.enter_context(open_regular(path))
        except (OSError, RefusedFile):
            if not irregular:  # swapped for something else since the lstat, or unreadable
                raise OSError(errno.EINVAL, _NOT_REGULAR, str(path)) from None
            source = io.BytesIO()  # a named pipe, a device or a link to nothing: replaced unread
        # Until the first change, the lines kept are counted, not copied: `whole` bytes of the file as they are.
        whole: int | None = None if irregular or _hard_linked(path) else 0
        top = -1  # the largest step kept
        if whole is not None:  # read on from where the last resume found only records of steps up to last_step
            whole, top, kept_records = _checked_prefix(path, source, last_step)
            source.seek(whole)
        cut: int | None = None  # where the first change is; the file's length kept in place when nothing follows
        # Line numbers count the checked prefix's lines too: one record per line there.
        for number, (line, record) in enumerate(lines_of(source), start=kept_records + 1):
            step = record.get("step") if record is not None else None
            if isinstance(step, bool) or not isinstance(step, int):
                step = None  # not a record
                if record is not None:
                    stepless.append(number)
            if whole is not None and step is not None and step <= last_step and source.tell() - whole == len(line):
                if line.endswith(b"\n"):
                    whole += len(line)
                    kept_records += 1
                    top = max(top, step)
                    continue
            if whole is not None:  # the first change: the lines before it are kept as they are
                cut = whole
                whole = None
            if step is None:
                if record is not None:  # kept beside it, as a record dropped for its step is
                    dropped.write(line if line.endswith(b"\n") else line + b"\n")
                continue  # dropped
            line = line if line.endswith(b"\n") else line + b"\n"
            if step > last_step:
                dropped.write(line)
                steps.append(step)
            else:
                if cut is not None:  # a record kept after the first change: the file is rewritten
                    _copy_range(source, cut, kept)
                    cut = None
                kept.write(line)
                kept_records += 1
                top = max(top, step)
        if whole is not None:
            _mark_checked(path, whole, top, kept_records)
            return []  # every line kept as it is, in the same file
        if steps or stepless:  # before the cut: a kill in between leaves them twice, never nowhere
            _keep_dropped(path.with_name(REPLACED_JSONL), dropped)
        if cut is not None:  # only the end goes: cut in place, without reading or copying what stays
            _cut_in_place(path, source, cut)
        else:
            kept.seek(0)
            mode = None if irregular else stat.S_IMODE(os.fstat(source.fileno()).st_mode)
            replace_file(path, kept, mode=mode)
    _mark_checked(path, None, top, kept_records)
    if stepless:
        _log.warning(_stepless_warning(path, stepless, kept_records, last_step))
    if irregular:
        held = (
            f"the {kept_records} record(s) up to step {last_step} read through it (what it names is left as it was)"
            if irregular.startswith("a symbolic link")
            else "nothing (it was not read)"
        )
        _log.warning(f"warning: {path} was {irregular}, not a regular file: replaced by a regular file holding {held}")
    return steps


CHECKED_FILE = "metrics.checked.json"
"""Beside metrics.jsonl: how much of it the last resume read and found to be records only (its length then, the
largest step in it, the file's identity and a digest of its last bytes). The next resume reads on from there, and
reads it all again when the file is another (moved aside, replaced, saved by an editor), when those last bytes
changed, when the last records in it hold a step beyond the largest recorded (a mark edited by hand), or when it
resumes before that largest step (a rollback). Bytes changed in place further back (a hand edit
that keeps the file and its end) are not looked at again: whatever they hold stays as it is. Every resume had read and parsed the whole file on rank 0 while
the other ranks waited: a week's metrics.jsonl of a 24-layer nGPT (10^5 records of about 3.8 kB at
train.log_interval 10) is 380 MB, 6 to 9 s of each resume, and it grows with every one."""
CHECKED_TAIL_BYTES = 4096
"""The bytes before the checked length whose digest must match: they change when the file is cut or rewritten."""


def _checked_prefix(path: Path, source: BinaryIO, last_step: int) -> tuple[int, int, int]:
    """(how many bytes at the start of the open `source` hold records only, of steps up to last_step; the largest
    step among them; how many records they hold, one per line), as the last resume left them in CHECKED_FILE;
    (0, -1, 0) when that record does not hold."""
    try:
        mark = json.loads(read_capped(path.with_name(CHECKED_FILE), 4096).decode("utf-8"))
        length, top, identity, digest = mark["bytes"], mark["max_step"], mark["file"], mark["tail_sha256"]
        records = mark["records"]
        info = os.fstat(source.fileno())
        if (
            any(isinstance(n, bool) or not isinstance(n, int) for n in (length, top, records))
            or not 0 < records <= length
            or identity != [info.st_dev, info.st_ino]
            or not 0 < length <= info.st_size
            or top > last_step
        ):
            return 0, -1, 0
        end = os.pread(source.fileno(), min(length, CHECKED_END_BYTES), length - min(length, CHECKED_END_BYTES))
        tail = end[-CHECKED_TAIL_BYTES:]
        if not tail.endswith(b"\n") or hashlib.sha256(tail).hexdigest() != digest:
            return 0, -1, 0
        if not _ends_within(end, whole=len(end) == length, top=top):
            return 0, -1, 0
        return length, top, records
    except (OSError, RefusedFile, UnicodeDecodeError, KeyError, TypeError, *UNPARSABLE):
        return 0, -1, 0


CHECKED_END_BYTES = 1 << 15
"""How many bytes before the checked length are read: the digest's, and the prefix's last records, which
`_ends_within` checks. A record of a few kB (one per log line) ends within them; a prefix whose last line is
longer is read whole."""


def _ends_within(end: bytes, whole: bool, top: int) -> bool:
    """Whether the whole lines in `end`, the last bytes of a checked prefix (`whole`: all of it), are records of
    integer steps up to `top`, with one at least. A mark whose "max_step" was set below the steps the prefix holds
    (a hand edit of metrics.checked.json) had a rollback keep the records after the resumed step, which the resumed
    run then logged again: each of those steps twice. The digest cannot tell: whoever sets the step can compute it.
    A run's last lines are its latest steps, so they show a lowered step."""
    lines = end.split(b"\n")[:-1]
    if not whole:
        lines = lines[1:]  # the first may have begun before the bytes read
    if not lines:
        return False  # a last line of more than CHECKED_END_BYTES: not a record ngpt_ds writes
    for line in lines:
        try:
            record = json.loads(line.decode("utf-8", errors="replace"))  # as summary.lines_of reads the lines it keeps
        except UNPARSABLE:
            return False
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, bool) or not isinstance(step, int) or step > top:
            return False
    return True


def _mark_checked(path: Path, length: int | None, top: int, records: int) -> None:
    """Record in CHECKED_FILE that the first `length` bytes of `path` (None: all of it) are `records` records, one
    per line, of steps up to `top`. Best effort: without the record, the next resume reads the whole file, as it always had.
    `path` is fsynced before the record is written, and the record as COMPLETE is (`write_manifest`: replaced, then
    its folder fsynced): the appends of the run are not synced, and after a power loss the marked length could hold
    a block of NULs the next resume would not read again (the record only checks the last bytes)."""
    checked = path.with_name(CHECKED_FILE)
    try:
        with open_regular(path) as f:
            os.fsync(f.fileno())  # the bytes marked are on disk before the mark is
            info = os.fstat(f.fileno())
            length = info.st_size if length is None else length
            tail = os.pread(f.fileno(), min(length, CHECKED_TAIL_BYTES), length - min(length, CHECKED_TAIL_BYTES))
        if length == 0 or info.st_nlink > 1:
            checked.unlink(missing_ok=True)
            return
        record = {
            "bytes": length,
            "max_step": top,
            "records": records,
            "file": [info.st_dev, info.st_ino],
            "tail_sha256": hashlib.sha256(tail).hexdigest(),
        }
        replace_file(checked, json.dumps(record) + "\n")
        fsync_dir(checked.parent)
    except (OSError, RefusedFile):
        with contextlib.suppress(OSError):
            checked.unlink(missing_ok=True)


def _cut_in_place(path: Path, source: BinaryIO, length: int) -> None:
    """Cut the regular file `path`, open as `source`, to its first `length` bytes, never through a link: the same
    file (device and inode) as was read, or OSError naming it."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        here, read = os.fstat(fd), os.fstat(source.fileno())
        if (here.st_dev, here.st_ino) != (read.st_dev, read.st_ino):
            raise OSError(errno.EINVAL, "metrics.jsonl was replaced while it was read", str(path))
        os.ftruncate(fd, length)
        os.fsync(fd)
    finally:
        os.close(fd)


def _stepless_warning(path: Path, lines: list[int], kept_records: int, last_step: int) -> str:
    """The warning of a resume that dropped the records of `lines` (1-based) from `path` for their step: not an
    integer ("12", 12.5, null, or none), as a hand edit leaves. They had gone without a word; a record's step
    says where it belongs, and one that cannot be read as a step number is no step's."""
    shown = ", ".join(str(n) for n in lines[:5]) + (f" and {len(lines) - 5} more" if len(lines) > 5 else "")
    return (
        f'warning: {path}: {len(lines)} record(s) without an integer "step" (line(s) {shown}) were dropped '
        f'on resume and moved to {path.with_name(REPLACED_JSONL)}: a record\'s "step" must be a whole number '
        f'(12, not "12", 12.5 or null). The {kept_records} record(s) up to step {last_step} are kept'
    )


def _copy_range(source: BinaryIO, length: int, target: BinaryIO) -> None:
    """Copy the first `length` bytes of `source` to `target` in pieces of 256 KiB, leaving `source`'s position
    as it was."""
    done = 0
    while done < length:
        piece = os.pread(source.fileno(), min(2**18, length - done), done)
        if not piece:
            raise OSError(errno.EIO, "metrics.jsonl became shorter while it was read", getattr(source, "name", None))
        target.write(piece)
        done += len(piece)


def _keep_dropped(replaced: Path, dropped: BinaryIO) -> None:
    """Append the records in `dropped` to metrics.replaced.jsonl, or, when that name holds a link (to whatever
    it names, left as it was) or a file with other hard links (the original folder's, of a `cp -al` copy),
    replace it by a regular file of its own holding the records read through it, then those."""
    dropped.seek(0)
    if _irregular(replaced) or _hard_linked(replaced):
        with tempfile.TemporaryFile(dir=replaced.parent) as both:
            for line, _ in records_if_readable(replaced):
                both.write(line.encode("utf-8"))
            shutil.copyfileobj(dropped, both)
            both.seek(0)
            replace_file(replaced, both)
    else:
        append_record(replaced, dropped, sync=True)


def _hard_linked(path: Path) -> bool:
    """Whether the regular file `path` has other names (a run folder copied with `cp -al`)."""
    try:
        return os.lstat(path).st_nlink > 1
    except FileNotFoundError:
        return False


def _irregular(path: Path) -> str | None:
    """What holds `path` when it is not a regular file ('a symbolic link to X', 'a named pipe'); None for a
    regular file or nothing."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return f"a symbolic link to {os.readlink(path)}"
    return file_kind(mode)


_NOT_REGULAR = "not a regular file: a symbolic link, a named pipe or a device holds its name"


def append_record(path: Path, text: str | BinaryIO, sync: bool = False) -> None:
    """Append `text` to the regular file `path`, created if absent, never through a link: O_NOFOLLOW refuses a
    link at the name, O_NONBLOCK a named pipe without a reader (ENXIO: a plain open waited for one for good), and
    fstat anything else that is no regular file. Raises OSError naming `path` (`_NOT_REGULAR`) for those."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENXIO):
            raise OSError(err.errno, _NOT_REGULAR, str(path)) from None
        raise
    with os.fdopen(fd, "ab") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(errno.EINVAL, _NOT_REGULAR, str(path))
        if isinstance(text, str):
            f.write(text.encode("utf-8"))
        else:  # an open binary file, copied from where it stands
            shutil.copyfileobj(text, f)
        f.flush()
        if sync:
            os.fsync(f.fileno())
