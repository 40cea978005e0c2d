"""The COMPLETE manifest of a checkpoint folder: every file, its size and a full-content digest.

A checkpoint is complete when its `COMPLETE` file exists; since ngpt_ds 0.1 that file is this JSON
manifest (relative path, size, blake2b-128 of each file), written last, so a file damaged after the
save (a truncated copy, a bad disk, a file swapped in) is found before anything reads it. The
`step N` line an older ngpt_ds wrote there has nothing to check against (`is_legacy`); any other text
is a damaged marker.
The folder layout around it is ngpt_ds.train.checkpoint's.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import heapq
import json
import os
import re
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from ngpt_ds.files import replace_file

COMPLETE = "COMPLETE"
MANIFEST_FORMAT = "ngpt_ds-checkpoint-manifest"
MANIFEST_VERSION = 1
HASH_NAME = "blake2b-128"
MAX_COMPLETE_BYTES = 16 * 2**20
"""The largest COMPLETE file read (16 MiB). A manifest takes about 90 bytes per file listed plus its path (117
bytes a file in a universal checkpoint of 16 files, 143 in a ZeRO-2 save of 3): the cap holds over 100,000
files of 150-byte paths, far above any checkpoint (two files per rank of a ZeRO-3 save, four per parameter of a
universal one). A larger one is refused unread: COMPLETE is read several times per checkpoint on every rank,
and a valid manifest padded with spaces to 400 MB was accepted after 18 s and 840 MB of memory (verify,
checkpoint_bytes, marker_digest and is_legacy of one checkpoint; 0.8 s and 19 MB with the cap)."""
LEGACY_MARKER = re.compile(r"step \d+\n?")
"""The whole COMPLETE file an older ngpt_ds wrote (`step N`, a newline). Any other text that is not a
manifest is a damaged or crafted marker, never a legacy one: it would skip every check."""


class MalformedManifest(ValueError):
    """A COMPLETE file that is neither a manifest nor a legacy marker (truncated, overwritten, crafted)."""


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.name not in (COMPLETE, COMPLETE + ".tmp")
    )


def _not_a_regular_file(folder: Path) -> str | None:
    """The first entry under `folder` that is neither a folder nor a regular file (links to files
    followed), described; None if there is none. Readers open checkpoint files by name, and opening a
    named pipe blocks until something writes to it: one such entry in a shared checkpoint would hang a
    resume. A link to a folder is refused too: the listing does not enter it, so the files DeepSpeed
    reads through it (a universal checkpoint's zero/) would escape the manifest and the unpickling check."""
    for p in sorted(folder.rglob("*")):
        if p.is_dir() and p.is_symlink():
            return f"{p} is a link to a folder"
        if p.is_dir() or p.is_file():
            continue
        try:
            mode = p.stat().st_mode
        except OSError:
            return f"{p} is a link to nothing"
        kind = "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        return f"{p} is {kind}, not a regular file"
    return None


def _digests(folder: Path, names: list[str]) -> list[str]:
    """The digest of each of `names`, each file (device and inode, links followed) read once: a folder handed over
    with 100,000 links or hard links to one large file had it read 100,000 times (days, before a resume started).
    Raises OSError."""
    first: dict[tuple[int, int], str] = {}
    same = []
    for name in names:
        info = (folder / name).stat()
        same.append(first.setdefault((info.st_dev, info.st_ino), name))
    unique = list(dict.fromkeys(same))
    # hashlib releases the GIL on large buffers: the per-rank shard files hash in parallel.
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(unique)))) as pool:
        found = dict(zip(unique, pool.map(lambda name: _digest(folder / name), unique)))
    return [found[name] for name in same]


def file_sizes(folder: Path) -> dict[str, int]:
    """Every file under `folder` but the marker: relative path -> size in bytes."""
    return {name: (folder / name).stat().st_size for name in _files(folder)}


def digests(folder: Path, names: list[str]) -> dict[str, str]:
    """Relative path -> blake2b-128 of the file's content, for `names` (raises OSError)."""
    return dict(zip(names, _digests(folder, names)))


def manifest_of(step: int, sizes: dict[str, int], file_digests: dict[str, str]) -> dict[str, Any]:
    """The manifest of a folder whose files have these sizes and digests (the same keys)."""
    files = {name: {"size": sizes[name], "blake2b": file_digests[name]} for name in sorted(sizes)}
    return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "step": step, "hash": HASH_NAME, "files": files}


def build_manifest(folder: Path, step: int) -> dict[str, Any]:
    """The manifest of `folder`, every file hashed by this process."""
    sizes = file_sizes(folder)
    return manifest_of(step, sizes, digests(folder, sorted(sizes)))


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The checkpoint's manifest, or None for the `step N` marker written before manifests existed.
    Raises MalformedManifest for any other text, and for a COMPLETE that `read_marker` refuses (OSError when
    it cannot be read)."""
    text = read_marker(path).decode("utf-8", errors="replace")
    if LEGACY_MARKER.fullmatch(text):
        return None
    try:
        manifest = json.loads(text, object_pairs_hook=_once_each)
    except _NamedTwice as err:
        raise MalformedManifest(
            f"{path / COMPLETE} is damaged: it names {err.key!r} twice (a checkpoint manifest names each file once)"
        ) from None
    except (ValueError, RecursionError):  # not JSON; a number too long for int(); nesting too deep
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise MalformedManifest(
            f"{path / COMPLETE} is damaged: it is neither a checkpoint manifest nor the 'step N' line of an older ngpt_ds"
        )
    return manifest


class _NamedTwice(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object hook: a key given twice in one object is an error. json.loads keeps the last one without a
    word, so a manifest's `files` could name a file twice and be checked against one entry of the two."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _NamedTwice(key)
        found[key] = value
    return found


def read_marker(path: Path) -> bytes:
    """The bytes of the checkpoint's COMPLETE file, read only when it is (or links to) a regular file of at most
    MAX_COMPLETE_BYTES. Raises MalformedManifest naming the file otherwise (OSError when it cannot be read). The
    trainer writes COMPLETE as a regular file of a few KiB; a named pipe would block every rank, a device could
    act on being opened, a huge file would fill the memory of every rank. A link is followed, as for every other
    file of a checkpoint: stores that keep files as links (git-annex, DVC, `cp -rs`) hold checkpoints so."""
    marker = path / COMPLETE
    try:
        return read_capped(marker, MAX_COMPLETE_BYTES)
    except RefusedFile as err:
        raise _refused(marker, err.what) from None


class RefusedFile(ValueError):
    """A file `open_regular` or `read_capped` did not read: not (a link to) a regular file, or too large."""

    def __init__(self, path: Path, what: str):
        super().__init__(f"{path} {what}")
        self.path, self.what = path, what


@contextlib.contextmanager
def open_regular(path: Path) -> Iterator[BinaryIO]:
    """`path` open for reading in binary, when it is or links to a regular file (a link is followed: a run or a
    checkpoint kept as links, by git-annex, DVC or `cp -rs`, is read as it is). Raises RefusedFile for anything
    else (a named pipe, whose read would block for good; a device, which could act on being opened, or a link to
    /dev/zero, which never ends; a folder), and OSError when it cannot be opened (FileNotFoundError for a link to
    nothing). Checked before the open and again on the open file: a named pipe put there in between opens without
    waiting (O_NONBLOCK) and is refused then."""
    kind = file_kind(os.stat(path).st_mode)
    if kind is not None:
        raise RefusedFile(path, f"is {kind}")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        kind = file_kind(os.fstat(f.fileno()).st_mode)
        if kind is not None:
            raise RefusedFile(path, f"is {kind}")
        yield f


def read_capped(path: Path, cap: int) -> bytes:
    """The bytes of `path`, a regular file or a link to one (`open_regular`) of at most `cap` bytes. Raises
    RefusedFile otherwise, a larger file unread (or read no further than `cap` + 1 bytes when it grew since its
    size was taken); OSError when it cannot be read."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(cap + 1) if size <= cap else b""
    if size > cap or len(data) > cap:
        raise RefusedFile(path, f"holds {max(size, len(data))} bytes")
    return data


def _refused(marker: Path, what: str) -> MalformedManifest:
    return MalformedManifest(
        f"{marker} {what}; a {COMPLETE} marker is a regular file of at most {MAX_COMPLETE_BYTES // 2**20} MiB, "
        "so it was not read (the checkpoint was altered)"
    )


def file_kind(mode: int) -> str | None:
    """None for a regular file; else what it is, for a message."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"


def newer_format(path: Path) -> int | None:
    """The manifest version of a checkpoint that a newer ngpt_ds wrote (above MANIFEST_VERSION), else None."""
    try:
        manifest = read_manifest(path)
    except (MalformedManifest, OSError):
        return None
    version = None if manifest is None else manifest.get("version")
    newer = isinstance(version, int) and not isinstance(version, bool) and version > MANIFEST_VERSION
    return version if newer else None


def checkpoint_bytes(path: Path) -> int | None:
    """Total size of a checkpoint's files from its manifest (None without one, or with a malformed one)."""
    try:
        manifest = read_manifest(path)
    except MalformedManifest:
        return None
    files = None if manifest is None else manifest.get("files")
    if not isinstance(files, dict) or not all(_is_entry(name, entry) for name, entry in files.items()):
        return None
    return sum(entry["size"] for entry in files.values())


def marker_digest(path: Path) -> str | None:
    """blake2b-128 of the checkpoint's COMPLETE file (None when it cannot be read or `read_marker` refuses
    it): two folders with the same marker digest hold the same manifest, hence the same checkpoint once
    verified. A legacy `step N` marker names no file, so its digest also covers what `_legacy_identity` reads."""
    try:
        marker = read_marker(path)
        if LEGACY_MARKER.fullmatch(marker.decode("utf-8", errors="replace")):
            return _legacy_identity(path, marker)
        return hashlib.blake2b(marker, digest_size=16).hexdigest()
    except (OSError, MalformedManifest, RefusedFile):
        return None


LEGACY_TAIL_BYTES = 64 << 10
LEGACY_TAIL_FILES = 64


def _legacy_identity(path: Path, marker: bytes) -> str:
    """The digest of a legacy checkpoint: its marker, every file's name and size, and the last LEGACY_TAIL_BYTES
    of the first LEGACY_TAIL_FILES files by name. The marker alone ('step 100') was the same for the step_100 of
    every run, so the ranks' agreement on which checkpoint to resume, the lineage (lineage.json's
    complete_blake2b: another run's step_100 named by --resume was taken for the one the run grew from, and the
    run continued its own lineage instead) and the source of a universal conversion could not tell two of them
    apart. The end of a file torch.save wrote is its zip directory, which holds the CRC-32 of every tensor: the
    tails tell the weights apart for a few MiB read at most, the same on every rank and wherever the folder lies."""
    h = hashlib.blake2b(marker, digest_size=16)
    for i, name in enumerate(_files(path)):
        file = path / name
        if i >= LEGACY_TAIL_FILES:
            h.update(f"\0{name}\0{file.stat().st_size}".encode())
            continue
        with open_regular(file) as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - LEGACY_TAIL_BYTES))
            h.update(f"\0{name}\0{size}\0".encode() + f.read(LEGACY_TAIL_BYTES))
    return h.hexdigest()


def digest_share(sizes: dict[str, int], rank: int, world: int) -> list[str]:
    """The files (relative path -> size) whose digests rank `rank` of `world` computes: each file goes to
    exactly one rank, largest first onto the rank with the fewest bytes so far, so no rank holds more
    than 1/world of the bytes plus one file. Deterministic: the same sizes give every rank the same split."""
    ranks = [(0, r) for r in range(world)]  # (bytes so far, rank): a heap, least loaded first
    mine = []
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        load, owner = heapq.heappop(ranks)
        heapq.heappush(ranks, (load + sizes[name], owner))
        if owner == rank:
            mine.append(name)
    return sorted(mine)


def verify(path: Path, *, rank: int = 0, world: int = 1) -> str | None:
    """None when every file matches the manifest; else one line naming the first bad file.

    Sizes are compared first (cheap, catches truncation), then the full-content digests. With `world`
    > 1 the listing and sizes are checked whole and only this rank's `digest_share` is hashed; the
    caller combines the ranks' answers (ngpt_ds.train.resume.verify_on_all_ranks). A folder with a
    `step N` COMPLETE (older ngpt_ds) has nothing to check against and passes: see `is_legacy`; other
    text that is not a manifest (truncated, crafted) fails. Any checkpoint holding something that is
    not a folder or a regular file (a named pipe, a device, a link to nothing) fails. A file that
    cannot be read is an answer too (not an exception), so every rank always has one.
    """
    try:
        return _check(path, rank, world)
    except OSError as err:
        return f"{err.filename or path} could not be read ({err.strerror or type(err).__name__})"


def _check(path: Path, rank: int, world: int) -> str | None:
    if not (path / COMPLETE).is_file():
        return f"{path} has no {COMPLETE} marker (the save was interrupted)"
    irregular = _not_a_regular_file(path)  # before the legacy return: it holds for every checkpoint
    if irregular is not None:
        return f"{irregular}; a checkpoint holds only folders and regular files"
    try:
        manifest = read_manifest(path)
    except MalformedManifest as err:
        return str(err)
    if manifest is None:
        return None
    files = manifest.get("files")
    if newer_format(path) is not None:
        return (
            f"{path / COMPLETE}: written by a newer ngpt_ds (checkpoint manifest version {manifest.get('version')}; "
            f"this one reads version {MANIFEST_VERSION})"
        )
    if manifest.get("version") != MANIFEST_VERSION or not isinstance(files, dict):
        return f"{path / COMPLETE}: unknown manifest version {manifest.get('version')!r}"
    malformed = next((name for name, entry in files.items() if not _is_entry(name, entry)), None)
    if malformed is not None:  # hand-edited or crafted: nothing outside the folder is ever read
        return f"{path / COMPLETE}: malformed manifest entry {malformed!r}"
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            return f"{file} is missing (listed in the {COMPLETE} manifest)"
        size = file.stat().st_size
        if size != entry["size"]:
            return f"{file} has {size} bytes, the {COMPLETE} manifest says {entry['size']} (truncated or rewritten)"
    extra = sorted(set(_files(path)) - set(files))
    if extra:
        return f"{path / extra[0]} is not in the {COMPLETE} manifest (added after the save)"
    names = digest_share({name: entry["size"] for name, entry in files.items()}, rank, world)
    for name, digest in zip(names, _digests(path, names)):
        if digest != files[name]["blake2b"]:
            return f"{path / name} does not match its {HASH_NAME} digest in the {COMPLETE} manifest (corrupted)"
    return None


def _is_entry(name: str, entry: Any) -> bool:
    """A relative path inside the folder, spelled as the listing spells it (`_files`: no '.' or empty part, no
    trailing '/'), with an int size and a digest. './x.pt', 'x.pt/' and '././x.pt' all named x.pt: a manifest
    listing one large file under 100,000 such spellings had it read 100,000 times, and passed."""
    parts = Path(name).parts
    return (
        bool(parts)
        and str(Path(name)) == name
        and not Path(name).is_absolute()
        and ".." not in parts
        and isinstance(entry, dict)
        and type(entry.get("size")) is int
        and entry["size"] >= 0
        and isinstance(entry.get("blake2b"), str)
    )


def marked_step(path: Path) -> int | None:
    """The step the checkpoint's COMPLETE records: its manifest's, or the number of an older ngpt_ds's `step N`
    line; None where neither says. Raises as `read_manifest`."""
    manifest = read_manifest(path)
    if manifest is None:
        return int(read_marker(path).decode("ascii", errors="replace").split()[1])  # the legacy line's N
    step = manifest.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def is_legacy(path: Path) -> bool:
    """A checkpoint marked complete by an older ngpt_ds: a `step N` COMPLETE, no manifest."""
    try:
        return (path / COMPLETE).is_file() and read_manifest(path) is None
    except MalformedManifest:
        return False


def legacy_warning(path: Path) -> str:
    return (
        f"warning: {path} has no manifest in its {COMPLETE} marker (written by an older ngpt_ds); loading it unverified"
    )


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Write `manifest` as folder/COMPLETE atomically (`replace_file`, then fsync of the folder)."""
    replace_file(folder / COMPLETE, json.dumps(manifest, indent=1).encode("utf-8"))
    fsync_dir(folder)


_NO_DIRECTORY_FSYNC = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EBADF)


def fsync_dir(path: Path) -> None:
    """Make the names just created or renamed in `path` durable (fsync of the folder). Some filesystems cannot
    fsync a folder (CIFS/SMB mounts such as Azure Files, some FUSE ones answer EINVAL): there the renames are as
    durable as the filesystem makes them, and the save goes on. Every checkpoint save had failed there
    ("Invalid argument"), so no run could keep a checkpoint."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in _NO_DIRECTORY_FSYNC:
            raise
    finally:
        os.close(fd)
