"""Local --input files and folders, checked before datasets reads them (ngpt_ds.data.sources): globs resolved
to files, each named once, and what a glob or a folder holds that is not a file (a pipe, a socket, a link to
nothing) named once as not read; compressed files only where this Python can decompress them; json lines, text
paragraphs and text lines short enough to read. A corpus folder's own checks are ngpt_ds.data.corpus_folder's.
"""

from __future__ import annotations

import glob
import lzma
import os
import re
import stat
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, BinaryIO

from ngpt_ds import log
from ngpt_ds.errors import NgptConfigError

_log = log.get(__name__)

# Compression suffix -> the name fsspec (which datasets reads files through) registers its decompressor under,
# and the package that provides it (None: Python's own modules). fsspec registers zstd and lz4 only where their
# packages import.
DECOMPRESSORS = {
    ".gz": ("gzip", None),
    ".bz2": ("bz2", None),
    ".xz": ("xz", None),
    ".zst": ("zstd", "zstandard"),
    ".lz4": ("lz4", "lz4"),
}


def resolve_files(inputs: Sequence[str]) -> list[str]:
    """The files that `inputs` (file names or globs) name, in order; a folder, a name that matches nothing and a file
    named twice are refused."""
    files: list[str] = []
    named: dict[str, str] = {}  # real path -> the --input that named it first
    for spec in inputs:
        before = len(files)
        pattern = os.path.expanduser(spec)
        if os.path.isfile(pattern):  # a file named with [, ? or *, as `wiki[en].jsonl`, is that file
            files.append(pattern)
        elif glob.has_magic(pattern):
            every = sorted(glob.glob(pattern, recursive=True))
            matched = [p for p in every if os.path.isfile(p)]
            # Folders a pattern matches (`**`) hold files, not documents; anything else matched was left out unsaid.
            warn_not_files(
                f"--input {spec!r} matches", [p for p in every if not os.path.isfile(p) and not os.path.isdir(p)]
            )
            if not matched:
                raise NgptConfigError(f"--input {spec!r}: no files match this pattern; check the path")
            files.extend(matched)
        elif os.path.isdir(pattern):
            raise NgptConfigError(
                f"--input {spec!r} is a directory; give it as the only --input (a saved or hub-style "
                "dataset dir) or pass a glob of its files, e.g. DIR/*.jsonl"
            )
        elif os.path.exists(pattern):  # a named pipe, a socket, a device: it was "no such file; check the path"
            raise NgptConfigError(
                f"--input {spec!r} is {_kind(pattern)}, not a file: a corpus is read several times (the tokenizer's "
                "sample, then every document), which only a file allows; save the stream to a file and pass that"
            )
        else:
            raise NgptConfigError(f"--input {spec!r}: no such file; check the path")
        for path in files[before:]:
            # A file read twice doubles its documents, and a document held out for validation in one
            # copy lands in training in the other (the split follows the document's index).
            real = os.path.realpath(path)
            if real in named:
                raise NgptConfigError(
                    f"--input {spec!r} names {shown(path)} again (already given by --input {named[real]!r}): its "
                    "documents would be read twice and validation documents would reappear in training; "
                    "give each file once"
                )
            named[real] = spec
    return files


def shown(path: str) -> str:
    """A file name as an error message shows it: quoted with its escapes where it holds a newline or another
    character that does not print, so that the message stays the one `error:` line the commands print."""
    return path if path.isprintable() else repr(path)


def _kind(path: str) -> str:
    try:
        mode = os.stat(path).st_mode
    except OSError:  # a link whose target is missing, a link loop, or a target this user may not look at
        return "a link that leads to no file"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def check_decompressors(files: list[str]) -> None:
    """Refuse, before anything is read, a compressed file this Python cannot decompress: without the zstandard
    package a `.jsonl.zst` corpus (the README's example) stopped at its first read with "Compression type zstd not
    supported; fix or remove the file", though the files were sound."""
    import fsspec

    have = set(fsspec.available_compressions())
    for file in files:
        name, package = DECOMPRESSORS.get(os.path.splitext(file.lower())[1], (None, None))
        if name is None or name in have:
            continue
        fix = (
            f"install the {package} package (pip install {package}) on every node that reads the corpus"
            if package
            else "this Python was built without its module for it; use one that has it"
        )
        raise NgptConfigError(
            f"--input file {file!r} is {name}-compressed, and this Python cannot decompress it: {fix}, or "
            "decompress the files"
        )


MAX_JSON_LINE_BYTES = 256 << 20
"""The longest line of a json/jsonl --input file read. datasets' json reader reads a whole line into memory and
parses it in blocks it keeps doubling: a 100 MB line took 1.28 GB (about 13 times the line). A 2 GB line (or a 1 MB
.jsonl.gz that inflates to one, a gzip bomb) took 26 GB, or stopped with a MemoryError traceback under a memory
limit, after the tokenizer was trained. 256 MiB (about 3.3 GB to read) is 50 times a long book."""
_SCAN_BYTES = 16 << 20


def open_decompressed(file: str) -> AbstractContextManager[Any]:
    """A context manager of `file`'s bytes as datasets reads them (fsspec, decompressed by the suffix): a plain open
    where fsspec infers no compression of a local path, the same bytes without fsspec's setup of each file (45 us
    against 12-14 us a file here: seconds a pass over a folder of 100,000 files)."""
    from fsspec.utils import infer_compression

    if "://" not in file and infer_compression(file) is None:
        return open(file, "rb")
    import fsspec

    return fsspec.open(file, "rb", compression="infer")


UNREADABLE = (OSError, EOFError, ValueError, lzma.LZMAError)
"""What reading a damaged local file raises: gzip's and bz2's errors are OSError or EOFError, lzma's is none of
these (a damaged .xz stopped on a `_lzma.LZMAError: Corrupt input data` traceback)."""


def longest_line(file: str) -> tuple[int, int, bool]:
    """(bytes, 1-based line number, whether the file was read to its end) of the longest line of `file`,
    decompressed as datasets decompresses it (fsspec, by the suffix). Read in blocks, so memory stays at one block
    whatever the line; stops at the first line over MAX_JSON_LINE_BYTES (its length then a lower bound)."""
    longest, at, current, number = 0, 1, 0, 1
    with open_decompressed(file) as f:
        while block := f.read(_SCAN_BYTES):
            start = 0
            while (end := block.find(b"\n", start)) >= 0:
                current += end - start
                if current > longest:
                    longest, at = current, number
                current, number, start = 0, number + 1, end + 1
            current += len(block) - start
            if current > MAX_JSON_LINE_BYTES:  # enough to refuse: no need to inflate the rest of a bomb
                return current, number, False
    return (current, number, True) if current > longest else (longest, at, True)


def check_line_lengths(files: list[str]) -> None:
    """Refuse, before anything is read, a json/jsonl file with a line longer than MAX_JSON_LINE_BYTES (see there)."""
    for file in files:
        try:
            length, line, whole = longest_line(file)
        except UNREADABLE:  # a damaged compressed file: datasets' read names it, with its hint
            continue
        if length > MAX_JSON_LINE_BYTES:
            raise NgptConfigError(
                f"--input file {file!r}: line {line} is {'' if whole else 'at least '}{length / 2**20:,.0f} MiB "
                f"(uncompressed), longer than the {MAX_JSON_LINE_BYTES >> 20} MiB a json line may be: datasets "
                "reads a line whole and needs about 13 times its size in memory. Split that document over several "
                "rows, or give it as a .txt file whose paragraphs (cut at empty lines) are each under "
                f"{MAX_JSON_LINE_BYTES >> 20} MiB"
            )


MAX_TEXT_DOCUMENT_BYTES = MAX_JSON_LINE_BYTES
"""The longest paragraph (--text-sample-by paragraph, the default), line (line) or file (document) of text read.
datasets' text builder reads a paragraph whole: it appends 10 MB blocks to it until it meets an empty line, so a
file without one (a dump of one document per line, a log, a .txt.gz that inflates to gigabytes) was read into memory
whole, about 4 times its size (a 256 MiB paragraph: 1.2 GB at peak), after the tokenizer was trained or hours into
the tokenizing, or stopped on a MemoryError. A line is read whole too. The bound is the json line's (256 MiB)."""
_NEWLINE = rb"(?:\r\n|\r(?!\n)|\n)"
"""A newline as Python's text mode reads it (datasets opens text files so): \\r\\n, \\r or \\n."""
_ENDS = {
    "paragraph": (re.compile(rb"\n\n+"), re.compile(rb"(?=[\r\n])" + _NEWLINE + b"{2,}")),
    "line": (re.compile(rb"\n+"), re.compile(rb"(?=[\r\n])" + _NEWLINE + b"+")),
}
"""What ends a document of a text file, by --text-sample-by: datasets splits paragraphs at two newlines in a row (a
line of spaces between them does not end one), lines at one. A run of more newlines is one end here (datasets keeps
the odd one at the start of the next paragraph, or reads empty lines: no bytes that matter to a bound). The first
pattern of each is the second for blocks without a \\r (10 to 50 times faster); the lookahead lets the regex engine
skip to the next newline byte (2 times faster)."""
_NEWLINES = re.compile(rb"\n*")
_HELD = 4
"""Newlines at the end of a block up to this many bytes are kept for the next one: the block boundary may cut an end
in two (`\\n` | `\\n`, `\\r` | `\\n`). A longer run is an end already; what goes on of it in the next block is skipped."""


def longest_text_document(file: str, sample_by: str, limit: int = MAX_TEXT_DOCUMENT_BYTES) -> tuple[int, int, bool]:
    """(bytes, byte offset where it starts, whether those are all its bytes) of the longest paragraph or line
    (`sample_by`) of text file `file`, decompressed as datasets decompresses it: from its first byte after the
    newlines that end the one before to the newlines that end it. Read in blocks, so memory stays at one block
    whatever the document; stops at the first document over `limit`, before its end where it is longer than what
    was read (the length then a lower bound). Offsets count the decompressed bytes."""
    plain, any_newline = _ENDS[sample_by]
    longest, at, start, base = 0, 0, 0, 0  # `start`: where the current document starts; `base`: where `buffer` does
    buffer, between = b"", False  # between: what was read ends in the newlines that end a document
    with open_decompressed(file) as f:
        while True:
            block = f.read(_SCAN_BYTES)
            buffer += block
            if between:  # those newlines may go on in this block: they end that document too
                lead = len(buffer) - len(buffer.lstrip(b"\r\n"))
                start, between = base + lead, lead == len(buffer) and bool(block)
            run = len(buffer) - len(buffer.rstrip(b"\r\n"))
            cut = len(buffer) - run if block and run <= _HELD else len(buffer)  # at the end: everything
            ends = any_newline if b"\r" in buffer else plain
            for end in ends.finditer(buffer, max(0, start - base), cut):
                if base + end.start() - start > longest:
                    longest, at = base + end.start() - start, start
                    if longest > limit:
                        return longest, at, True
                start = base + end.end()
                between = end.end() == len(buffer) and bool(block)
            if base + cut - start > limit:  # enough to refuse: no need to inflate the rest of a bomb
                return base + cut - start, start, False
            if not block:
                break
            buffer, base = buffer[cut:], base + cut
    last = max(0, base + cut - start)
    return (last, start, True) if last > longest else (longest, at, True)


def fits_text_documents(file: str, sample_by: str, limit: int) -> bool:
    """Whether every paragraph or line (`sample_by`) of text file `file`, decompressed, is `limit` bytes or shorter,
    told by searching each block backwards for the last end within `limit` bytes of the current document's start
    (bytes.rfind: a few calls per block, at the speed of reading), in the blocks of lf_blocks, whose ends are those
    of the regex scan. longest_text_document runs a regex over every end in Python, at 31-46 MB/s on a corpus of
    short lines (datasets then reads it at 23 MB/s), and every one of N --num-shards parts runs this check over the
    whole corpus: here 500-630 MB/s."""
    end = b"\n\n" if sample_by == "paragraph" else b"\n"
    run = sample_by == "paragraph"  # a paragraph ends at the last newline of a run (cut by a window or a block)
    start, base, newline = 0, 0, False  # where the current document starts; where the block starts; its last byte
    with open_decompressed(file) as f:
        for block in lf_blocks(f, sample_by):
            pos = start - base  # below 0 where the document started in an earlier block
            # An end that the block boundary cut (`\n` | `\n`), or one that goes on here: the document starts past it.
            if run and block.startswith(b"\n") and (newline or 0 < start == base):
                pos = _past_newlines(block, 0)
            # The last end that starts within `limit` bytes of the document's start: the documents up to it fit.
            while (found := block.rfind(end, max(pos, 0), pos + limit + len(end))) >= 0:
                pos = _past_newlines(block, found) if run else found + len(end)
            if pos + limit + len(end) <= len(block):  # no end within `limit` bytes: that document is longer
                return False
            start, base, newline = base + pos, base + len(block), block.endswith(b"\n")
            if base - start - newline > limit:  # a last newline may begin the document's end
                return False
    return base - start <= limit  # the last document, its last newline included (no end follows it)


_CR_TO_LF = bytes.maketrans(b"\r", b"\n")


def lf_blocks(f: BinaryIO, sample_by: str) -> Iterator[bytes]:
    """The bytes of `f` in blocks (none empty) of the same length in all, each \r that is part of a paragraph's or
    a line's end (`sample_by`, by the regex scan's rules, _ENDS) made a \n, every other byte as it was: the ends of
    the regex scan are then the runs of \n that fits_text_documents looks for, at the same offsets. By line every
    \r is an end; by paragraph one is where its run of \r and \n holds two newlines (\r\n, \r, \n), and a \r
    starting a lone \r\n, or alone, stays. A \r among a block's last two bytes waits for the next block."""
    before, held = b"", b""  # the byte before `held`; the bytes not given out yet
    while True:
        block = f.read(_SCAN_BYTES)
        raw = held + block if held else block
        keep = 0 if not block else 2 if raw[-2:-1] == b"\r" else 1 if raw.endswith(b"\r") else 0
        if not raw or len(raw) <= keep:
            if not block:
                return
            held = raw
            continue
        out = raw
        if b"\r" in raw:
            out = _paragraph_crs(raw, before) if sample_by == "paragraph" else raw.translate(_CR_TO_LF)
        yield out[: len(raw) - keep] if keep else out
        before, held = raw[len(raw) - keep - 1 : len(raw) - keep], raw[len(raw) - keep :]
        if not block:
            return


def _paragraph_crs(text: bytes, before: bytes) -> bytes:
    """`text` with each \r in a run of two newlines or more made a \n, `before` the byte before it (C-speed
    replaces, 3 times faster than a regex): a \r beside another \r, then one after a \n, then one before a \n
    and a newline byte."""
    done = text.replace(b"\r\r", b"\n\n").replace(b"\n\r", b"\n\n").replace(b"\r\n\n", b"\n\n\n")
    return b"\n" + done[1:] if done.startswith(b"\r") and before in (b"\r", b"\n") else done


def _past_newlines(buffer: bytes, pos: int) -> int:
    """Where the run of \\n starting at `pos` of `buffer` ends (`pos` where there is none)."""
    match = _NEWLINES.match(buffer, pos)
    return pos if match is None else match.end()


def text_file_bytes(file: str, limit: int) -> tuple[int, bool]:
    """(bytes, whether those are all its bytes) of text file `file`, decompressed as datasets decompresses it: its
    size where it is not compressed (nothing read), else counted in blocks, stopping past `limit` (a bomb is not
    inflated whole)."""
    if os.path.splitext(file.lower())[1] not in DECOMPRESSORS:
        return os.path.getsize(file), True
    total = 0
    with open_decompressed(file) as f:
        while block := f.read(_SCAN_BYTES):
            total += len(block)
            if total > limit:
                return total, False
    return total, True


def check_text_documents(files: list[str], sample_by: str) -> None:
    """Refuse, before anything is read, a text file with a paragraph or a line (`sample_by`) longer than
    MAX_TEXT_DOCUMENT_BYTES (see there), or with --text-sample-by document a file longer than that: datasets reads
    such a file whole as one string (a 256 MiB file: 1.1 GB at peak, measured), so a 5 GB file needed some 20 GB."""
    if sample_by not in _ENDS:
        _check_whole_files(files)
        return
    for file in files:
        try:
            if fits_text_documents(file, sample_by, MAX_TEXT_DOCUMENT_BYTES):
                continue
            length, offset, exact = longest_text_document(file, sample_by)
        except UNREADABLE:  # a damaged compressed file: datasets' read names it, with its hint
            continue
        if length <= MAX_TEXT_DOCUMENT_BYTES:
            continue
        fix = (
            "put an empty line between its documents (a paragraph ends at two newlines in a row), or pass "
            "--text-sample-by line if each of its lines is a document"
            if sample_by == "paragraph"
            else "break it into lines, one document each"
        )
        decompressed = " of the decompressed text" if os.path.splitext(file.lower())[1] in DECOMPRESSORS else ""
        raise NgptConfigError(
            f"--input file {file!r}: the {sample_by} at byte {offset}{decompressed} is {'' if exact else 'at least '}"
            f"{_size(length)}, longer than the {_size(MAX_TEXT_DOCUMENT_BYTES)} a text document may be: datasets reads "
            f"a {sample_by} whole and needs about 4 times its size in memory. {fix[0].upper()}{fix[1:]}, or leave that "
            "file out"
        )


def _check_whole_files(files: list[str]) -> None:
    """--text-sample-by document: refuse a file over MAX_TEXT_DOCUMENT_BYTES, the bound of a paragraph or a line."""
    for file in files:
        try:
            length, whole = text_file_bytes(file, MAX_TEXT_DOCUMENT_BYTES)
        except UNREADABLE:  # a damaged compressed file: datasets' read names it, with its hint
            continue
        if length <= MAX_TEXT_DOCUMENT_BYTES:
            continue
        decompressed = " decompressed" if os.path.splitext(file.lower())[1] in DECOMPRESSORS else ""
        raise NgptConfigError(
            f"--input file {file!r} is {'' if whole else 'at least '}{_size(length)}{decompressed}, longer than the "
            f"{_size(MAX_TEXT_DOCUMENT_BYTES)} a text document may be: with --text-sample-by document the whole file "
            "is one document, which datasets reads whole and needs about 4 times its size in memory. Pass "
            "--text-sample-by paragraph (documents end at an empty line) or line, split it into files of one "
            "document each, or leave that file out"
        )


def _size(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 1 << 20 else f"{n:,} bytes"


NAMED_AT_MOST = 3
"""Entries a warning names (warn_not_files, corpus_folder.warn_files_not_read); the rest are counted."""


def warn_not_files(where: str, entries: list[str]) -> None:
    """Say once which `entries` of a glob or a corpus folder are left out as not files, and why. datasets leaves
    them out of a folder, and resolve_files out of a glob, without a word: a named pipe `b.jsonl` beside `a.jsonl`
    (a stream meant as part of the corpus), or a link to a file on a disk this node has not mounted, was a corpus
    prepared without those documents while the user took the whole folder as read. Not an error: a socket or a
    pipe of another program may well sit in a folder of documents, and one named as --input itself is refused."""
    if not entries:
        return
    named = ", ".join(f"{shown(e)} ({_kind(e)})" for e in entries[:NAMED_AT_MOST])
    more = f" and {len(entries) - NAMED_AT_MOST} more" if len(entries) > NAMED_AT_MOST else ""
    _log.warning(
        f"{where} {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} that {'is' if len(entries) == 1 else 'are'} "
        f"not a file, not read: {named}{more}. A corpus is read several times (the tokenizer's sample, then every "
        "document), which only a file allows: save a stream to a file, and make a link lead to one, to have it read"
    )
