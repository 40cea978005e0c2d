"""Reading a config file's text (a model/train YAML, a DeepSpeed JSON, a checkpoint's saved config): bounded in size,
UTF-8 only, and each way it fails named with the file and the fix, before any parser sees it."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from pathlib import Path

from ngpt_ds.errors import NgptConfigError

MAX_CONFIG_FILE_BYTES = 2**20
"""The largest config file read (a model/train YAML or a DeepSpeed JSON): some 500 times the largest shipped one.
Read whole, a file given by mistake (a dataset shard, a checkpoint) held several times its size in memory on every
rank before any message: a 512 MiB file given to --deepspeed_config took 1.8 GB and 16 s to be called invalid."""


_READ_SHA256: dict[str, str] = {}
"""The sha256 of the bytes read_config_text last returned the text of, by the file's absolute path (parsed_sha256)."""


def read_config_text(path: Path, what: str) -> str:
    """The text of a config file of at most MAX_CONFIG_FILE_BYTES, read no further than that. Raises NgptConfigError
    for a larger file or one that is not UTF-8 text (a leading byte-order mark is dropped), OSError when it cannot be
    read. The sha256 of the bytes read is kept for parsed_sha256."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(MAX_CONFIG_FILE_BYTES + 1)
    _READ_SHA256.pop(os.path.abspath(path), None)  # until these bytes are known to be the text returned
    if len(data) > MAX_CONFIG_FILE_BYTES:
        raise NgptConfigError(
            f"{what} {path} holds {max(size, len(data))} bytes, more than any config file ({MAX_CONFIG_FILE_BYTES} "
            "at most): it is some other file (a dataset shard, a checkpoint?); give the config file"
        )
    # utf-8-sig: a byte-order mark (Windows editors' "UTF-8 with BOM") is dropped, as YAML drops it; the JSON reader
    # stopped at it ("Unexpected UTF-8 BOM (decode using utf-8-sig)", advice for a programmer).
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise NgptConfigError(f"{what} {path} {not_utf8(data, err)}") from None
    _READ_SHA256[os.path.abspath(path)] = hashlib.sha256(data).hexdigest()
    return text


def parsed_sha256(path: Path) -> str | None:
    """The sha256 of the bytes of `path` that read_config_text last returned as text in this process (None where it
    has not): what a run records as its config file's hash. A second read of the file to hash it, after the parse,
    hashed whatever the path held then (the file replaced meanwhile by a colleague's edit, an rsync), a hash that did
    not describe the settings the run was started with."""
    return _READ_SHA256.get(os.path.abspath(path))


UTF16_32_MARKS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)
"""Byte-order marks of the other Unicode encodings, longest first (UTF-32 LE begins with UTF-16 LE's)."""


def not_utf8(data: bytes, err: UnicodeDecodeError) -> str:
    """What is wrong with config bytes that are not UTF-8, and the fix: the encoding a byte-order mark names (Windows
    PowerShell 5's `>` and Out-File write UTF-16), or the first bad byte's line and column (a Latin-1 or Windows-1252
    editor's accented letter). The reader's own text ("cannot be read as YAML (UnicodeDecodeError: 'utf-8' codec can't
    decode byte 0xe9 in position 73: invalid continuation byte)") named neither the place nor the fix."""
    for mark, encoding in UTF16_32_MARKS:
        if data.startswith(mark):
            return (
                f"is {encoding} text (it starts with a {encoding} byte-order mark, as Windows PowerShell's `>` "
                f"writes), not UTF-8: save it as UTF-8 (e.g. `Out-File -Encoding utf8`, or iconv -f {encoding} -t "
                "UTF-8)"
            )
    # err.object: the bytes decoded, after a UTF-8 byte-order mark that utf-8-sig dropped; the text before the bad
    # byte is valid UTF-8, so the column counts characters, as an editor does.
    before = bytes(err.object[: err.start]).decode("utf-8").rsplit("\n", 1)
    line = bytes(err.object[: err.start]).count(b"\n") + 1
    return (
        f"is not UTF-8 text: byte 0x{err.object[err.start]:02x} at line {line}, column {len(before[-1]) + 1} (a "
        "character saved in another encoding, such as Latin-1 or Windows-1252?); save the file as UTF-8, or write "
        "that character in plain ASCII"
    )


_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_file(path: Path) -> str | None:
    """The end of the message for a config path that exists but is neither a file nor a folder (a named pipe, a
    device, a socket), or None. They were called missing ("does not exist"), which they are not; a shell's process
    substitution (`--deepspeed_config <(jq ... ds.json)`) gives such a pipe, /dev/fd/63. Not opened: opening a pipe
    waits for a writer, and a device can act on its opening."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), None)
    if kind is None:
        return None
    return (
        f"is {kind}, not a regular file (a shell's <(...) gives a pipe): write the settings to a file and give "
        "that file"
    )


def broken_link(path: Path) -> str | None:
    """The end of the message for a config path that is a symbolic link leading nowhere, or None: a loop of links
    (ELOOP, in the path's last part or a folder above it) was called an unknown preset (--config) or a file that
    does not exist (--deepspeed_config), and a link to a moved or deleted file named the link alone."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return (
                "is a symbolic link that leads back to itself (a loop of links, in its name or a folder above it): "
                "point the link at the config file, or give the file itself"
            )
        if os.path.islink(path):
            return (
                f"is a symbolic link to {os.readlink(path)}, which does not exist (moved or deleted?): point the "
                "link at the config file, or give the file itself"
            )
    return None


def unreadable(path: Path, err: OSError) -> str:
    """The message for a config file that exists but cannot be read: its name, the system's reason, the fix."""
    reason = err.strerror or type(err).__name__
    fix = (
        "give the user running the trainer read access to it"
        if isinstance(err, PermissionError)
        else "check the file and the disk that holds it, or give another file"
    )
    return f"{path} cannot be read: {reason}; {fix}"


def unparsable(err: ValueError | RecursionError) -> str:
    """Why a parser stopped in one of errors.UNPARSABLE, with the fix, for "PATH: cannot be read as YAML/JSON: ...".
    Python's own texts were advice for a programmer ("use sys.set_int_max_str_digits() to increase the limit") or
    none ("maximum recursion depth exceeded while calling a Python object")."""
    if isinstance(err, RecursionError):
        return (
            "its lists or mappings nest thousands deep, beyond what the parser follows (maximum recursion depth); a "
            "config nests a few levels: the file is damaged or not a config file, give the config file"
        )
    digits = re.search(r"value has (\d+) digits", str(err))
    if "integer string conversion" in str(err):
        size = f"of {digits.group(1)} digits, more than the 4300" if digits else "of more than the 4300 digits"
        return (
            f"it holds a number {size} that Python reads (no setting needs such a number): correct the number, or "
            "give the config file"
        )
    return f"({type(err).__name__}: {err})"
