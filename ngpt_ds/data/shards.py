"""On-disk format of a prepared dataset, and its validation.

A prepared dataset is one directory:

    meta.json                 format version, tokenizer, vocab, dtype, splits, source, license,
                              per shard the sha256 of each block of its file (ngpt_ds.data.shard_hashes)
    tokenizer.model           the sentencepiece model the shards were made with
    train_000000.bin ...      flat token ids of the train split, little-endian uint16/uint32
    validation_000000.bin ... same for the held-out documents (absent when val_fraction is 0)

Documents are concatenated with one EOS id after each. A shard of N tokens is exactly
N * itemsize bytes, so a reader can `np.memmap` it with no header.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ngpt_ds.data import shard_hashes, staging
from ngpt_ds.data.capped_json import MAX_JSON_BYTES, read_capped_json
from ngpt_ds.errors import NgptConfigError, Problems
from ngpt_ds.files import replace_file

META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.model"
FORMAT_NAME = "ngpt_ds-token-shards"
FORMAT_VERSION = 1
# Explicit little-endian so shards are portable between hosts.
DTYPES: dict[str, np.dtype] = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
SPLITS = ("train", "validation")

PREPARE_HINT = "prepare it with `python launch/prepare_data.py --input CORPUS --out DIR`"


def _not_a_dataset_hint(folder: Path) -> str:
    """What a folder without meta.json given as a dataset most likely is. Publishing is atomic, so it is not an
    interrupted preparation (the hint was to delete it): the parts of a preparation by --num-shards, waiting for
    their merge (days of tokenizing), or a folder above datasets and runs."""
    parts = sorted(folder.glob("part-*-of-*/part.json"))
    if parts:
        count = parts[0].parent.name.rsplit("-of-", 1)[-1].lstrip("0") or "0"
        return (
            f"it holds {len(parts)} part(s) prepared with --num-shards: merge them into one dataset first "
            f"(python launch/prepare_data.py --merge --num-shards {count} --out {folder})"
        )
    inside = sorted(p.parent for p in folder.glob(f"*/{META_FILE}"))
    if inside:
        shown = ", ".join(str(p) for p in inside[:3]) + (" ..." if len(inside) > 3 else "")
        return f"the prepared dataset(s) in it: {shown}; pass one of those"
    return PREPARE_HINT


def dtype_for_vocab(vocab_size: int) -> str:
    """Smallest shard dtype that holds every id in [0, vocab_size)."""
    return "uint16" if vocab_size <= 2**16 else "uint32"


def dtype_max_vocab(dtype: str) -> int:
    return int(np.iinfo(DTYPES[dtype]).max) + 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True, kw_only=True, slots=True)
class ShardMeta:
    file: str
    """File name inside the dataset dir."""
    tokens: int
    """Token count; the file is tokens * itemsize bytes."""
    sha256_blocks: tuple[str, ...] | None = None
    """sha256 (hex) of each DatasetMeta.hash_block_bytes block of the file; None in datasets prepared
    before ngpt_ds recorded them."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SplitMeta:
    documents: int
    """Documents in this split (each followed by one EOS)."""
    tokens: int
    """Sum of the shards' token counts, EOS included."""
    shards: tuple[ShardMeta, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class DatasetMeta:
    """Contents of `meta.json`, plus the directory it was read from."""

    data_dir: Path
    """Directory holding meta.json; relative paths below resolve against it."""
    format_version: int
    vocab_size: int
    """Tokenizer vocabulary size; every id in the shards is < vocab_size."""
    dtype: str
    """'uint16' (vocab <= 65536) or 'uint32'."""
    eos_id: int
    """Id appended after every document."""
    tokenizer_path: str
    """sentencepiece .model, relative to data_dir."""
    tokenizer_sha256: str
    tokenizer_origin: str
    """How the tokenizer was made: trained (settings) or loaded (file name)."""
    splits: dict[str, SplitMeta]
    """'train' always; 'validation' when documents were held out."""
    val_fraction: float
    source: str
    """Human-readable description of the corpus."""
    license: str
    """License and attribution of the corpus text ('' when unknown)."""
    created_by: str = ""
    hash_block_bytes: int | None = None
    """Block size of the shards' sha256_blocks; None when the shards carry no hashes."""
    corpus_sha256: str | None = None
    """sha256 of the document stream the tokens were made from (each document's UTF-8 length, then its text:
    ngpt_ds.data.prepare.hash_document), the same whether one process prepared the dataset or parts merged into
    it (ngpt_ds.data.parts); None when not recorded (a dataset prepared by an older ngpt_ds, or parts of which one
    recorded none)."""

    @property
    def tokenizer_file(self) -> Path:
        return self.data_dir / self.tokenizer_path

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    def shard_path(self, shard: ShardMeta) -> Path:
        return self.data_dir / shard.file

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "vocab_size": self.vocab_size,
            "dtype": self.dtype,
            "eos_id": self.eos_id,
            "tokenizer": {
                "path": self.tokenizer_path,
                "sha256": self.tokenizer_sha256,
                "origin": self.tokenizer_origin,
            },
            "splits": {
                name: {
                    "documents": s.documents,
                    "tokens": s.tokens,
                    "shards": [shard_json(sh) for sh in s.shards],
                }
                for name, s in self.splits.items()
            },
            "val_fraction": self.val_fraction,
            "source": self.source,
            "license": self.license,
            "created_by": self.created_by,
        } | {
            key: value
            for key, value in (("hash_block_bytes", self.hash_block_bytes), ("corpus_sha256", self.corpus_sha256))
            if value is not None
        }

    def summary(self) -> str:
        """A few lines for the console."""
        lines = [f"{self.data_dir}: vocab {self.vocab_size}, {self.dtype}, eos {self.eos_id}"]
        for name, s in self.splits.items():
            lines.append(f"  {name}: {s.tokens:,} tokens, {s.documents:,} documents, {len(s.shards)} shard(s)")
        lines.append(f"  source: {self.source}")
        if self.license:
            lines.append(f"  license: {self.license}")
        return "\n".join(lines)


def shard_json(shard: ShardMeta) -> dict[str, Any]:
    """One shard's entry in meta.json (and in a part's part.json)."""
    entry: dict[str, Any] = {"file": shard.file, "tokens": shard.tokens}
    if shard.sha256_blocks is not None:
        entry["sha256_blocks"] = list(shard.sha256_blocks)
    return entry


def whole(value: object, name: str) -> int:
    """A count or id read from meta.json/part.json: a JSON integer. int() turned 1e400 into an OverflowError
    traceback, and took 12.5, "12" or true for 12, 12 and 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} = {value!r} is not an integer")
    return value


def parse_shard(raw: dict[str, Any]) -> ShardMeta:
    """A shard entry of meta.json or part.json; its hashes are checked by `hash_problems`. Raises
    TypeError/KeyError/ValueError on a malformed entry (the callers name the file)."""
    hashes = raw.get("sha256_blocks")
    if hashes is not None and not isinstance(hashes, list):
        raise TypeError(f"sha256_blocks of shard {raw.get('file')!r} must be a list, not {type(hashes).__name__}")
    return ShardMeta(
        file=str(raw["file"]),
        tokens=whole(raw["tokens"], "tokens"),
        sha256_blocks=None if hashes is None else tuple(hashes),
    )


def hash_problems(shards: list[tuple[str, ShardMeta]], block_bytes: object, itemsize: int, fix: str) -> list[str]:
    """What is wrong with the recorded hashes of `shards` ((where, shard) pairs) under `block_bytes`:
    all shards carry them or none, block_bytes is a positive integer, and each shard has one 64-digit
    lowercase hex sha256 per block of its size. A crafted value gives one line, not a traceback."""
    have = [where for where, s in shards if s.sha256_blocks is not None]
    if not have:
        return [] if block_bytes is None else [f"hash_block_bytes = {block_bytes!r}: no shard has sha256_blocks; {fix}"]
    if len(have) != len(shards):
        lacking = next(where for where, s in shards if s.sha256_blocks is None)
        return [f"{lacking} has no sha256_blocks while other shards have them; {fix}"]
    if isinstance(block_bytes, bool) or not isinstance(block_bytes, int) or block_bytes < 1:
        return [f"hash_block_bytes = {block_bytes!r}: must be a positive integer (bytes per hashed block); {fix}"]
    found = []
    for where, shard in shards:
        assert shard.sha256_blocks is not None
        want = shard_hashes.block_count(shard.tokens * itemsize, block_bytes)
        if len(shard.sha256_blocks) != want:
            found.append(
                f"{where} sha256_blocks: {len(shard.sha256_blocks)} hashes, but {shard.tokens} tokens in blocks of "
                f"{block_bytes} bytes make {want}; {fix}"
            )
            continue
        for i, h in enumerate(shard.sha256_blocks):
            if not (isinstance(h, str) and shard_hashes.HEX_SHA256.fullmatch(h)):
                found.append(f"{where} sha256_blocks[{i}] = {h!r}: must be a sha256 as 64 lowercase hex digits; {fix}")
                break
    return found


def write_meta(meta: DatasetMeta, directory: Path) -> None:
    """Write meta.json durably (`replace_file`: a new temp file, fsync, rename): it is the completeness marker.
    meta.json.tmp is created new, never opened through a link: one planted there in a dataset someone shared
    (`ngpt-prepare --add-hashes` rewrites meta.json in place) had its target overwritten with the metadata, and
    the link was renamed into place as meta.json."""
    replace_file(directory / META_FILE, json.dumps(meta.to_json(), indent=2) + "\n")


def _parse_meta(raw: dict[str, Any], data_dir: Path, meta_path: Path) -> DatasetMeta:
    fix = f"the file is damaged or was not written by ngpt_ds; {PREPARE_HINT}"
    if raw.get("format") != FORMAT_NAME:
        raise NgptConfigError(f"{meta_path}: format = {raw.get('format')!r}, expected {FORMAT_NAME!r}; {fix}")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise NgptConfigError(
            f"{meta_path}: format_version = {version!r} is not supported by this ngpt_ds "
            f"(it reads version {FORMAT_VERSION}); re-prepare the dataset with this version "
            f"(`python launch/prepare_data.py ... --out {data_dir} --overwrite`)"
        )
    try:
        tok = raw["tokenizer"]
        splits = {
            name: SplitMeta(
                documents=whole(s["documents"], "documents"),
                tokens=whole(s["tokens"], "tokens"),
                shards=tuple(parse_shard(sh) for sh in s["shards"]),
            )
            for name, s in raw["splits"].items()
        }
        return DatasetMeta(
            data_dir=data_dir,
            format_version=int(version),
            vocab_size=whole(raw["vocab_size"], "vocab_size"),
            dtype=str(raw["dtype"]),
            eos_id=whole(raw["eos_id"], "eos_id"),
            tokenizer_path=str(tok["path"]),
            tokenizer_sha256=str(tok["sha256"]),
            tokenizer_origin=str(tok.get("origin", "")),
            splits=splits,
            val_fraction=float(raw.get("val_fraction", 0.0)),
            source=str(raw.get("source", "")),
            license=str(raw.get("license", "")),
            created_by=str(raw.get("created_by", "")),
            hash_block_bytes=raw.get("hash_block_bytes"),
            corpus_sha256=_optional_sha256(raw.get("corpus_sha256")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise NgptConfigError(f"{meta_path}: missing or malformed field ({type(e).__name__}: {e}); {fix}") from None


def _optional_sha256(value: object) -> str | None:
    """A recorded sha256 (64 lowercase hex digits) or None; ValueError for anything else (the caller names the file)."""
    if value is None or (isinstance(value, str) and shard_hashes.HEX_SHA256.fullmatch(value)):
        return value
    raise ValueError(f"corpus_sha256 = {str(value)[:80]!r} is not a sha256")


MAX_META_BYTES = MAX_JSON_BYTES
"""The largest meta.json read (ngpt_ds.data.capped_json)."""


def load_dataset_meta(
    data_dir: str | Path, *, verify_tokenizer_hash: bool = True, verify_contents: bool = True
) -> DatasetMeta:
    """Read and validate `<data_dir>/meta.json` against the files beside it.

    Checks: format and version known; dtype known and wide enough for the vocab; every shard is
    a file name in data_dir listed in one split only, exists, is a whole number of tokens, and
    holds exactly the token count the metadata says; the recorded block hashes are well formed; the
    tokenizer file is in data_dir, exists and (unless verify_tokenizer_hash=False) matches its recorded
    hash; and (unless verify_contents=False) a sample of shard blocks matches its recorded sha256
    (`check_shard_contents`). Raises NgptConfigError listing every problem found.
    """
    data_dir = Path(data_dir)
    meta_path = data_dir / META_FILE
    if not data_dir.is_dir():
        # An --overwrite killed between its two renames left the old dataset set aside under another name.
        if not os.path.lexists(data_dir) and (aside := staging.missing_hint(data_dir)):
            raise NgptConfigError(f"dataset {data_dir} does not exist, {aside}")
        if os.path.lexists(data_dir):  # a file (meta.json itself, a corpus text) was "does not exist; prepare it"
            inside = (
                f": pass {data_dir.parent}" if data_dir.name == META_FILE else ": pass the folder that holds meta.json"
            )
            raise NgptConfigError(f"data dir {data_dir} is a file, not a dataset folder{inside}")
        raise NgptConfigError(f"data dir {data_dir} does not exist; {PREPARE_HINT}")
    if not meta_path.is_file():
        raise NgptConfigError(
            f"{meta_path} not found: {data_dir} is not a prepared dataset; {_not_a_dataset_hint(data_dir)}"
        )
    raw = read_capped_json(
        meta_path, "a dataset's meta.json", f"delete {data_dir} and prepare it again", MAX_META_BYTES
    )
    if not isinstance(raw, dict):
        raise NgptConfigError(f"{meta_path} is not a JSON object; delete {data_dir} and prepare it again")
    meta = _parse_meta(raw, data_dir, meta_path)

    p = Problems(f"dataset {data_dir}")
    redo = f"delete {data_dir} and prepare it again"
    if meta.dtype not in DTYPES:
        p.add("meta.json dtype", meta.dtype, f"must be one of {sorted(DTYPES)}; {redo}")
        p.raise_if_any()
    p.check(
        0 < meta.vocab_size <= dtype_max_vocab(meta.dtype),
        "meta.json vocab_size",
        meta.vocab_size,
        f"must be in 1..{dtype_max_vocab(meta.dtype)} for dtype {meta.dtype}; {redo}",
    )
    p.check("train" in meta.splits, "meta.json splits", sorted(meta.splits), f"needs a 'train' split; {redo}")
    itemsize = meta.np_dtype.itemsize
    inside = f"must be a file name inside {data_dir}; {redo}"
    listed_in: dict[str, str] = {}  # shard file -> the split that lists it first
    hashed: list[tuple[str, ShardMeta]] = []  # the shards whose recorded hashes are checked below
    for name, split in meta.splits.items():
        p.check(
            split.tokens == sum(s.tokens for s in split.shards),
            f"meta.json splits.{name}.tokens",
            split.tokens,
            f"disagrees with the sum of its shards' counts; {redo}",
        )
        for shard in split.shards:
            # ngpt_ds writes plain names (<split>_NNNNNN.bin), each once: a shard listed in two splits
            # would make the validation loss one of training data, and a path would read outside the folder.
            if not _plain_name(shard.file):
                p.add(f"meta.json splits.{name} shard", shard.file, inside)
                continue
            if shard.file in listed_in:
                p.add(
                    f"meta.json splits.{name} shard",
                    shard.file,
                    f"also listed in split {listed_in[shard.file]!r}; each shard belongs to one split "
                    f"(validation must not overlap training); {redo}",
                )
                continue
            listed_in[shard.file] = name
            hashed.append((f"meta.json splits.{name} shard {shard.file!r}", shard))
            path = meta.shard_path(shard)
            if not path.is_file():
                p.add(
                    f"shard {shard.file}",
                    "missing",
                    f"the file listed in meta.json is not in {data_dir}; copy it back from a good copy of the "
                    f"dataset (a run resumes only on the data it trained on), or {redo}",
                )
                continue
            size = path.stat().st_size
            if size % itemsize:
                p.add(
                    f"shard {shard.file}",
                    f"{size} bytes",
                    f"not a multiple of {itemsize} ({meta.dtype}): the file is truncated or corrupt; {redo}",
                )
            elif size // itemsize != shard.tokens:
                p.add(
                    f"shard {shard.file}",
                    f"{size // itemsize} tokens",
                    f"meta.json says {shard.tokens} tokens: the file is truncated or was replaced; {redo}",
                )
    hash_fix = f"meta.json is damaged or was edited: copy the dataset again, or {redo}"
    if len(hashed) == sum(len(split.shards) for split in meta.splits.values()):  # else named above already
        p.items.extend(hash_problems(hashed, meta.hash_block_bytes, itemsize, hash_fix))
    tok = meta.tokenizer_file
    if not _plain_name(meta.tokenizer_path):
        p.add("meta.json tokenizer.path", meta.tokenizer_path, inside)
    elif not tok.is_file():
        p.add("tokenizer", meta.tokenizer_path, f"file not found in {data_dir}; {redo}")
    elif verify_tokenizer_hash and sha256_file(tok) != meta.tokenizer_sha256:
        p.add(
            "tokenizer",
            meta.tokenizer_path,
            f"its sha256 differs from meta.json: the shards were made with another tokenizer; {redo}",
        )
    p.raise_if_any()
    if verify_contents:
        from ngpt_ds.data.shard_check import check_shard_contents  # it reads DatasetMeta from here

        check_shard_contents(meta)
    return meta


def check_tokenizer_agrees(meta: DatasetMeta) -> None:
    """Raise NgptConfigError unless the dataset's tokenizer (checked against its recorded sha256 by
    load_dataset_meta) has meta.json's vocab_size and eos_id. The trainer builds the model with meta.json's
    vocab_size: a meta.json edited to 511 or 513 beside the 512-piece tokenizer passed every check and trained a
    model of another vocabulary, which failed later, at the first window holding id 511 or in generate.py at the
    first id the tokenizer does not have."""
    from ngpt_ds.data.tokenizer import Tokenizer  # sentencepiece: only where the tokenizer is parsed

    p = Problems(f"dataset {meta.data_dir}")
    loaded = Tokenizer.load(meta.tokenizer_file)
    edited = f"meta.json was edited or damaged; delete {meta.data_dir} and prepare it again"
    p.check(
        loaded.vocab_size == meta.vocab_size,
        "meta.json vocab_size",
        meta.vocab_size,
        f"the tokenizer {meta.tokenizer_path} has {loaded.vocab_size} pieces: {edited}",
    )
    p.check(
        loaded.eos_id == meta.eos_id,
        "meta.json eos_id",
        meta.eos_id,
        f"the tokenizer {meta.tokenizer_path}'s EOS piece is id {loaded.eos_id}: {edited}",
    )
    p.raise_if_any()


def _plain_name(file: str) -> bool:
    """A file name, not a path: no folder part, not absolute, not '.' or '..'."""
    return file not in ("", ".", "..") and "/" not in file and "\\" not in file


def check_vocab_matches(meta: DatasetMeta, model_vocab_size: int, data_dir: str | Path | None = None) -> None:
    """Raise NgptConfigError unless the model's vocab_size equals the dataset tokenizer's."""
    if model_vocab_size != meta.vocab_size:
        where = data_dir if data_dir is not None else meta.data_dir
        raise NgptConfigError(
            f"model config vocab_size = {model_vocab_size} but dataset {where} was tokenized with "
            f"{meta.tokenizer_path} (vocab {meta.vocab_size}); set vocab_size: {meta.vocab_size} in the "
            f"model config, or re-prepare the data with --vocab-size {model_vocab_size}"
        )
