"""Prepare a dataset: corpus -> tokenizer -> token shards + meta.json, written atomically.

Everything is written into a hidden staging dir beside `out` (`.<name>.partial-<id>`) and
renamed to `out` only when complete, meta.json last; an interrupted run leaves no `out`.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import ngpt_ds
from ngpt_ds import log
from ngpt_ds.data import shard_hashes
from ngpt_ds.data.encode import encode_in_order
from ngpt_ds.data.shard_writer import ShardWriter
from ngpt_ds.data.shards import (
    DTYPES,
    FORMAT_VERSION,
    META_FILE,
    TOKENIZER_FILE,
    DatasetMeta,
    dtype_for_vocab,
    dtype_max_vocab,
    write_meta,
)
from ngpt_ds.data.sources import TEXT_SAMPLE_BY, Corpus, CorpusSpec, open_corpus
from ngpt_ds.data.staging import (
    publish_target,
    refuse_under_way,
    remove_staging,
    restore_set_aside,
    staging_dir,
    swap_in,
)
from ngpt_ds.data.tokenizer import MODEL_TYPES, Tokenizer, train_tokenizer, training_lines
from ngpt_ds.errors import NgptConfigError, Problems
from ngpt_ds.files import replace_file
from ngpt_ds.overwrite import check_replaceable

_log = log.get(__name__)

DEFAULT_VOCAB_SIZE = 8192
# Documents per task sent to a worker: large enough to amortize pickling, small enough
# that 2 * workers tasks in flight stay a few MB.
_BATCH_DOCS = 512
_BATCH_CHARS = 4 << 20


@dataclass(kw_only=True, slots=True)
class PrepareConfig:
    """Everything `prepare_dataset` needs. Mirrors `launch/prepare_data.py` options."""

    inputs: tuple[str, ...]
    """Local files/globs, a saved dataset dir, a dataset dir, or a hub dataset name."""
    out: Path
    """Dataset directory to create. Must not exist or be empty, unless overwrite."""
    text_field: str = "text"
    """Column with the document text."""
    hub_config: str | None = None
    """Hub dataset config name."""
    split: str = "train"
    """Split to read from a saved DatasetDict or a hub dataset."""
    text_sample_by: str = "paragraph"
    """Text files: one document per 'paragraph', 'line' or 'document' (whole file)."""
    vocab_size: int | None = None
    """Vocab of the tokenizer to train (default 8192); with `tokenizer`, must equal its vocab if given."""
    tokenizer: Path | None = None
    """Existing sentencepiece .model to use instead of training one."""
    tokenizer_type: str = "bpe"
    """sentencepiece model type when training: 'bpe' or 'unigram'."""
    tokenizer_sample_chars: int = 20_000_000
    """Train the tokenizer on (at most) the first this many characters of train documents."""
    val_fraction: float = 0.02
    """Fraction of documents held out as the 'validation' split, spread evenly; 0 for none."""
    shard_tokens: int = 100_000_000
    """Tokens per shard file at most."""
    dtype: str = "auto"
    """Shard dtype: 'auto' (uint16 when vocab <= 65536, else uint32), 'uint16' or 'uint32'."""
    workers: int = 0
    """Tokenizer processes; 0 means one per CPU core (at most 16)."""
    overwrite: bool = False
    """Replace an existing `out` that holds a prepared dataset (meta.json), only once the new one is
    complete; never a folder that holds or lies inside an input."""
    progress: bool = True
    """Show a progress bar and status lines on stderr."""
    source_description: str | None = None
    """Recorded as meta.json `source`; default describes the inputs."""
    license: str = ""
    """License and attribution of the corpus, recorded in meta.json."""

    @property
    def worker_count(self) -> int:
        """`workers` with 0 resolved: one per CPU core, at most 16."""
        return self.workers or min(os.cpu_count() or 1, 16)

    def validate(self) -> None:
        p = Problems("prepare_data options")
        p.check(0 <= self.val_fraction <= 0.5, "--val-fraction", self.val_fraction, "must be in [0, 0.5]")
        # held_out_fraction keeps denominators up to 10**6: a smaller fraction became 0 and the dataset was
        # written without a validation split, which training refuses.
        p.check(
            not (0 < self.val_fraction <= 0.5) or held_out_fraction(self.val_fraction) > 0,
            "--val-fraction",
            self.val_fraction,
            "is below 1e-6, the smallest fraction held out (one document in a million); pass at least 1e-6",
        )
        p.check(self.shard_tokens >= 1, "--shard-tokens", self.shard_tokens, "must be a positive integer")
        p.check(self.workers >= 0, "--workers", self.workers, "must be >= 0 (0 = one per CPU core)")
        p.check(
            self.tokenizer_sample_chars >= 1,
            "--tokenizer-sample-chars",
            self.tokenizer_sample_chars,
            "must be a positive integer",
        )
        p.check(
            self.tokenizer_type in MODEL_TYPES,
            "--tokenizer-type",
            self.tokenizer_type,
            f"use one of {', '.join(MODEL_TYPES)}",
        )
        p.check(
            self.text_sample_by in TEXT_SAMPLE_BY,
            "--text-sample-by",
            self.text_sample_by,
            f"use one of {', '.join(TEXT_SAMPLE_BY)}",
        )
        p.check(self.dtype == "auto" or self.dtype in DTYPES, "--dtype", self.dtype, f"use auto, {' or '.join(DTYPES)}")
        if self.vocab_size is not None:
            p.check(self.vocab_size >= 1, "--vocab-size", self.vocab_size, "must be a positive integer")
            if self.dtype in DTYPES and self.vocab_size >= 1:
                p.check(
                    self.vocab_size <= dtype_max_vocab(self.dtype),
                    "--vocab-size",
                    self.vocab_size,
                    f"too large for --dtype {self.dtype} (ids up to {dtype_max_vocab(self.dtype) - 1}); "
                    "use --dtype auto or a smaller vocab",
                )
        if self.tokenizer is not None:
            if self.tokenizer.is_dir():  # a prepared dataset's folder, most likely: it was "file not found"
                held = self.tokenizer / "tokenizer.model"
                p.add(
                    "--tokenizer",
                    str(self.tokenizer),
                    f"is a folder, not a sentencepiece .model file; pass its tokenizer.model ({held})"
                    if held.is_file()
                    else "is a folder, not a sentencepiece .model file; pass the .model file itself "
                    "(a prepared dataset's tokenizer.model)",
                )
            elif not self.tokenizer.is_file():
                p.add("--tokenizer", str(self.tokenizer), "file not found; pass an existing sentencepiece .model")
            elif self.tokenizer.suffix != ".model":
                p.add("--tokenizer", str(self.tokenizer), "expected a sentencepiece .model file")
        if self.out.exists() and not self.overwrite:
            if not self.out.is_dir():
                p.add("--out", str(self.out), "exists and is not a directory; choose another path")
            elif any(self.out.iterdir()):
                p.add("--out", str(self.out), "exists and is not empty; pass --overwrite or choose another path")
        p.raise_if_any()
        publish_target(self.out)  # a link is refused here, before any tokenizing: the rename would replace it
        if self.overwrite:
            sources = [(path, "the input") for path in local_input_paths(self.inputs)]
            if self.tokenizer is not None:
                sources.append((self.tokenizer, "the --tokenizer file"))
            check_replaceable(
                self.out,
                kind="a prepared dataset",
                marker=META_FILE,
                sources=sources,
                holds_kind=lambda folder: (folder / META_FILE).is_file(),
            )


def local_input_paths(inputs: tuple[str, ...]) -> list[Path]:
    """The local files and folders that --input names (globs expanded); hub names match none."""
    found: list[Path] = []
    for item in inputs:
        pattern = os.path.expanduser(item)
        literal = os.path.lexists(pattern) or not glob.has_magic(pattern)  # `wiki[en].jsonl` is that file
        matches = [pattern] if literal else glob.glob(pattern, recursive=True)
        found.extend(Path(m) for m in matches if os.path.lexists(m))
    return found


def open_inputs(cfg: PrepareConfig) -> Corpus:
    """The corpus that the input options of `cfg` name."""
    return open_corpus(
        CorpusSpec(
            inputs=tuple(cfg.inputs),
            text_field=cfg.text_field,
            hub_config=cfg.hub_config,
            split=cfg.split,
            text_sample_by=cfg.text_sample_by,
        )
    )


def held_out_fraction(val_fraction: float) -> Fraction:
    """--val-fraction as the exact fraction `is_validation_doc` holds out."""
    return Fraction(val_fraction).limit_denominator(1_000_000)


def shard_dtype(cfg: PrepareConfig, vocab_size: int) -> str:
    """The token dtype of the shards (--dtype, auto: the smallest that holds `vocab_size` ids)."""
    dtype = dtype_for_vocab(vocab_size) if cfg.dtype == "auto" else cfg.dtype
    if vocab_size > dtype_max_vocab(dtype):
        raise NgptConfigError(
            f"tokenizer vocab {vocab_size} is too large for --dtype {dtype} (ids up to "
            f"{dtype_max_vocab(dtype) - 1}); use --dtype auto or uint32"
        )
    return dtype


def is_validation_doc(index: int, fraction: Fraction) -> bool:
    """Hold out documents evenly: doc i is held out when floor((i+1)f) > floor(i f).

    Exactly floor(n f) of the first n documents; exact rational arithmetic, so the choice is
    the same on every machine and independent of how the stream is batched.
    """
    return (index + 1) * fraction.numerator // fraction.denominator > index * fraction.numerator // fraction.denominator


def _say(cfg: PrepareConfig, msg: str) -> None:
    if cfg.progress:
        _log.info(msg)


def _noting_failure(texts: Iterator[str], failed: list[BaseException]) -> Iterator[str]:
    """`texts`, noting in `failed` what stopped them. sentencepiece reads its sentences from Python and turns an
    error raised there into "sentencepiece training failed: .../sources.py(151): texts", the last line of a
    traceback: the corpus's message (which file could not be read, the text field that is not a string, and the
    fix) was lost."""
    try:
        yield from texts
    except GeneratorExit:  # closed once the sample is full: no failure (a vocab error may follow)
        raise
    except BaseException as err:
        failed.append(err)
        raise


def _tokenizer(cfg: PrepareConfig, corpus: Corpus, staging: Path, fraction: Fraction) -> tuple[Tokenizer, str]:
    """Copy or train the tokenizer into staging; return it and a description of its origin."""
    dest = staging / TOKENIZER_FILE
    if cfg.tokenizer is not None:
        loaded = Tokenizer.load(cfg.tokenizer)
        if cfg.vocab_size is not None and cfg.vocab_size != loaded.vocab_size:
            raise NgptConfigError(
                f"--tokenizer {cfg.tokenizer} has vocab {loaded.vocab_size} but --vocab-size is {cfg.vocab_size}; "
                "drop --vocab-size or pass a tokenizer of that size"
            )
        # the bytes checked above, not the file again: one replaced meanwhile was copied under the other's check
        replace_file(dest, loaded.model_bytes)
        tok, origin = Tokenizer.load(dest), f"loaded from {cfg.tokenizer.name}"
    else:
        vocab = cfg.vocab_size or DEFAULT_VOCAB_SIZE
        train_docs = (t for i, t in enumerate(corpus.texts()) if not is_validation_doc(i, fraction))
        _say(
            cfg,
            f"training a sentencepiece {cfg.tokenizer_type} tokenizer, vocab {vocab}, "
            f"on up to {cfg.tokenizer_sample_chars:,} characters",
        )
        failed: list[BaseException] = []
        try:
            tok = train_tokenizer(
                training_lines(_noting_failure(train_docs, failed), cfg.tokenizer_sample_chars),
                dest,
                vocab_size=vocab,
                model_type=cfg.tokenizer_type,
            )
        except NgptConfigError:
            if failed:  # the corpus's own error, which sentencepiece turned into a line of a traceback
                raise failed[0] from None
            raise
        origin = (
            f"trained: sentencepiece {cfg.tokenizer_type}, vocab {vocab}, byte fallback, identity "
            f"normalization, on up to {cfg.tokenizer_sample_chars:,} characters of train documents"
        )
    if tok.eos_id < 0:
        raise NgptConfigError(f"--tokenizer {cfg.tokenizer}: the model has no EOS piece; train it with eos_id >= 0")
    return tok, origin


def hash_document(digest: Any, text: str) -> None:
    """Add one document to the corpus hash (meta.json `corpus_sha256`, a part's part.json): its UTF-8 length, then
    its bytes (the length keeps ["ab", "c"] and ["a", "bc"] apart). "surrogatepass": a lone surrogate a JSON line
    can hold is hashed, not an error."""
    data = text.encode("utf-8", "surrogatepass")
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)


def _hashed(texts: Iterator[str], digest: Any) -> Iterator[str]:
    """`texts`, each added to `digest` as it is read."""
    for text in texts:
        hash_document(digest, text)
        yield text


def _batches(texts: Iterator[str], fraction: Fraction) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Group documents into worker tasks tagged with each document's is-validation flag."""
    index, docs, flags, chars = 0, [], [], 0
    for text in texts:
        docs.append(text)
        flags.append(is_validation_doc(index, fraction))
        index += 1
        chars += len(text)
        if len(docs) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
            yield np.array(flags, dtype=bool), docs
            docs, flags, chars = [], [], 0
    if docs:
        yield np.array(flags, dtype=bool), docs


def _write_shards(
    cfg: PrepareConfig,
    corpus: Corpus,
    tok: Tokenizer,
    staging: Path,
    dtype: str,
    fraction: Fraction,
    workers: int,
    corpus_hash: Any,
) -> dict[str, ShardWriter]:
    """Tokenize the corpus into train and validation shards, adding each document read to `corpus_hash`."""
    writers = {
        name: ShardWriter(directory=staging, split=name, dtype=dtype, shard_tokens=cfg.shard_tokens)
        for name in ("train", "validation")
    }
    bar = tqdm(desc="tokenizing", unit="doc", disable=not cfg.progress, dynamic_ncols=True)
    tokens = 0
    with bar:
        for flags, ids, lengths in encode_in_order(
            _batches(_hashed(corpus.texts(), corpus_hash), fraction), str(tok.path), workers
        ):
            ends = np.cumsum(lengths)
            starts = ends - lengths
            # Write runs of consecutive documents of one split with one call each.
            run_starts = np.flatnonzero(np.r_[True, flags[1:] != flags[:-1]])
            run_ends = np.r_[run_starts[1:], len(flags)]
            for a, b in zip(run_starts, run_ends):
                split = "validation" if flags[a] else "train"
                writers[split].write(ids[starts[a] : ends[b - 1]], documents=int(b - a))
            tokens += ids.size
            bar.update(len(flags))
            bar.set_postfix(tokens=f"{tokens:,}", refresh=False)
    return writers


def _publish(staging: Path, out: Path, overwrite: bool) -> None:
    """Move the complete staging dir to `out` with renames (atomic on one filesystem)."""
    with contextlib.suppress(OSError):  # filled (or removed) by another job meanwhile: judged below
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
    if out.exists() and not overwrite:
        raise NgptConfigError(f"--out {out} appeared while preparing; pass --overwrite or choose another path")
    swap_in(staging, out, overwrite=overwrite)  # one that appears from here on is refused there, never replaced


def prepare_dataset(cfg: PrepareConfig) -> Path:
    """Prepare `cfg.inputs` into the dataset dir `cfg.out` and return it.

    Raises NgptConfigError, before writing anything visible, for bad options, missing files, an
    empty corpus, an unknown text field, a vocab too large for the corpus or dtype, or a tokenizer
    whose vocab contradicts --vocab-size.
    """
    # First, so that the checks see the folder a killed --overwrite left under another name put back: a
    # rerun without --overwrite then says --out exists, rather than tokenizing everything and failing to publish.
    restore_set_aside(cfg.out)
    cfg.validate()
    out = publish_target(cfg.out)
    refuse_under_way(out)  # another preparation of `out` now: refused before the corpus is read, not at publishing
    started = time.perf_counter()
    corpus = open_inputs(cfg)
    _say(cfg, f"reading {cfg.source_description or corpus.description}")
    fraction = held_out_fraction(cfg.val_fraction)
    staging = staging_dir(out)
    try:
        tok, origin = _tokenizer(cfg, corpus, staging, fraction)
        dtype = shard_dtype(cfg, tok.vocab_size)
        # The stream the tokens were made from, hashed as each part of a parted preparation hashes it
        # (ngpt_ds.data.parts): the same corpus prepared either way names the same corpus_sha256.
        corpus_hash = hashlib.sha256()
        writers = _write_shards(cfg, corpus, tok, staging, dtype, fraction, cfg.worker_count, corpus_hash)
        splits = {name: w.close() for name, w in writers.items()}
        if splits["validation"].documents == 0:
            if fraction > 0:
                need = -(-fraction.denominator // fraction.numerator)
                n = splits["train"].documents
                raise NgptConfigError(
                    f"{corpus.description}: only {n} documents, too few to hold out --val-fraction "
                    f"{cfg.val_fraction} (that needs >= {need} documents); raise --val-fraction to >= "
                    f"{1 / n:.3g}, give more documents, or pass --val-fraction 0"
                )
            del splits["validation"]
        meta = DatasetMeta(
            data_dir=out,
            format_version=FORMAT_VERSION,
            vocab_size=tok.vocab_size,
            dtype=dtype,
            eos_id=tok.eos_id,
            tokenizer_path=TOKENIZER_FILE,
            tokenizer_sha256=tok.sha256,
            tokenizer_origin=origin,
            splits=splits,
            val_fraction=cfg.val_fraction,
            source=cfg.source_description or corpus.description,
            license=cfg.license,
            created_by=f"ngpt_ds {ngpt_ds.__version__}",
            hash_block_bytes=shard_hashes.BLOCK_BYTES,  # the ShardWriters' default
            corpus_sha256=corpus_hash.hexdigest(),
        )
        write_meta(meta, staging)
        _publish(staging, out, cfg.overwrite)
    finally:
        remove_staging(staging)
    _say(cfg, f"prepared in {time.perf_counter() - started:.1f} s\n{meta.summary()}")
    return out
