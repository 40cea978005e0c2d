"""Prepare one dataset on many nodes: tokenize disjoint parts, then merge them into one meta.json.

Tokenizing, not reading, is what takes a single node days on a web-scale corpus. Every part reads
the same document stream a single-process preparation reads (streaming: nothing is stored but the
tokens) and numbers the documents the same way. Documents are dealt out in blocks: block b, the
documents [b * block_docs, (b + 1) * block_docs), belongs to part b mod N. A part tokenizes only
its blocks, and writes each block's train and validation tokens to shard files of their own. A
document's split is decided by its global index (`is_validation_doc`), as in one process.

The merge then only links files: it lists every block's shards in block order, which is corpus
order, so the merged dataset holds, split by split, token for token what one process writes (only
the shard boundaries differ). It refuses a missing part, parts made with different tokenizers or
settings, and parts that read different corpora, naming the part.

While parts exist, --out holds one folder per finished part (`part-00000-of-00002/`, with its
`part.json` written last); the merge replaces --out by the dataset. What the merge reads back from a part,
and checks, is in ngpt_ds.data.part_files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import ngpt_ds
from ngpt_ds import log
from ngpt_ds.data import shard_hashes
from ngpt_ds.data.encode import encode_in_order
from ngpt_ds.data.part_files import MAX_PART_BYTES as MAX_PART_BYTES  # ngpt_ds.data.parts.MAX_PART_BYTES, as before
from ngpt_ds.data.part_files import PART_FILE, PART_FORMAT, part_dir
from ngpt_ds.data.part_files import part_shards as _part_shards  # looked up here at each merge: tests replace it
from ngpt_ds.data.part_files import read_part as _read_part
from ngpt_ds.data.part_files import tokenizer_bytes as _tokenizer_bytes
from ngpt_ds.data.prepare import (
    _BATCH_CHARS,
    _BATCH_DOCS,
    PrepareConfig,
    _say,
    hash_document,
    held_out_fraction,
    is_validation_doc,
    local_input_paths,
    open_inputs,
    shard_dtype,
)
from ngpt_ds.data.shard_writer import ShardWriter
from ngpt_ds.data.shards import (
    DTYPES,
    FORMAT_VERSION,
    META_FILE,
    TOKENIZER_FILE,
    DatasetMeta,
    ShardMeta,
    SplitMeta,
    shard_json,
    write_meta,
)
from ngpt_ds.data.staging import publish_target, remove_staging, restore_set_aside, staging_dir, swap_in
from ngpt_ds.data.tokenizer import Tokenizer
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.files import replace_file
from ngpt_ds.overwrite import check_holds_no_run, check_not_source

_log = log.get(__name__)

DEFAULT_BLOCK_DOCS = 65536
"""Documents per block. Large enough that each block's shard files are few; small enough that every
part gets work on a corpus of a few million documents."""
# Settings every part must share for the merge to equal one preparation.
_SHARED = (
    "num_parts",
    "block_docs",
    "documents",
    "tokenizer_sha256",
    "vocab_size",
    "dtype",
    "eos_id",
    "val_fraction",
    "source",
)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Durably, through a temporary name created new, never a link's (`replace_file`): the file marks its
    folder complete."""
    replace_file(path, json.dumps(data, indent=2) + "\n")


def _check_part_options(cfg: PrepareConfig, num_parts: int, part_index: int, block_docs: int) -> None:
    if cfg.tokenizer is None:
        raise NgptConfigError(
            "--num-shards needs --tokenizer FILE.model: every part must tokenize with the same "
            "model. Train one first (prepare a sample of the corpus on one node and use its "
            "tokenizer.model)"
        )
    if not (isinstance(num_parts, int) and num_parts >= 1):
        raise NgptConfigError(f"--num-shards {num_parts}: must be a positive integer")
    if not (isinstance(part_index, int) and 0 <= part_index < num_parts):
        raise NgptConfigError(f"--shard-index {part_index}: must be in 0..{num_parts - 1} for --num-shards {num_parts}")
    if block_docs < 1:
        raise NgptConfigError(f"--shard-block-docs {block_docs}: must be a positive integer")
    # The shared option checks of one preparation, against a folder that does not exist (the part's
    # own folder is checked below: parts share --out).
    dataclasses.replace(cfg, out=cfg.out / f".{uuid.uuid4().hex}", overwrite=False).validate()
    publish_target(cfg.out)  # the merge renames the dataset into its name: refused now, not after every part
    check_not_source(
        cfg.out, [(p, "the input") for p in local_input_paths(cfg.inputs)] + [(cfg.tokenizer, "the --tokenizer file")]
    )
    if cfg.out.exists() and not cfg.out.is_dir():
        raise NgptConfigError(f"--out {cfg.out} is a file; the parts go into a folder (shared by every node)")
    if (cfg.out / META_FILE).is_file() and not cfg.overwrite:
        raise NgptConfigError(
            f"--out {cfg.out} already holds a merged dataset ({META_FILE}); choose another --out, "
            "or pass --overwrite to replace it at the merge"
        )
    done = part_dir(cfg.out, part_index, num_parts)
    restore_set_aside(done)  # this part's --overwrite killed mid-swap
    if done.exists() and not cfg.overwrite:
        raise NgptConfigError(
            f"part {part_index} of {num_parts} is already in {done}; pass --overwrite to prepare "
            "it again, or run the merge (--merge)"
        )


def prepare_part(cfg: PrepareConfig, num_parts: int, part_index: int, block_docs: int = DEFAULT_BLOCK_DOCS) -> Path:
    """Tokenize part `part_index` of `num_parts` of `cfg.inputs` into `cfg.out/part-K-of-N/`; return that folder."""
    restore_set_aside(cfg.out)  # a merge killed mid-swap: the checks below read the folder put back
    _check_part_options(cfg, num_parts, part_index, block_docs)
    assert cfg.tokenizer is not None  # _check_part_options rejects a missing --tokenizer
    corpus = open_inputs(cfg)
    _say(cfg, f"reading {cfg.source_description or corpus.description}: part {part_index} of {num_parts}")
    fraction, workers = held_out_fraction(cfg.val_fraction), cfg.worker_count
    final = part_dir(cfg.out, part_index, num_parts)
    staging = staging_dir(final)
    try:
        tok = Tokenizer.load(cfg.tokenizer)
        if cfg.vocab_size is not None and cfg.vocab_size != tok.vocab_size:
            raise NgptConfigError(
                f"--tokenizer {cfg.tokenizer} has vocab {tok.vocab_size} but --vocab-size is "
                f"{cfg.vocab_size}; drop --vocab-size or pass a tokenizer of that size"
            )
        if tok.eos_id < 0:
            raise NgptConfigError(f"--tokenizer {cfg.tokenizer}: the model has no EOS piece; train it with eos_id >= 0")
        # The bytes just loaded and checked, not the file read again: replaced meanwhile, it was another
        # tokenizer that encoded the part and was hashed, under the vocab_size and eos_id of the one checked.
        replace_file(staging / TOKENIZER_FILE, tok.model_bytes)
        dtype = shard_dtype(cfg, tok.vocab_size)
        counted = {"documents": 0}
        corpus_hash = hashlib.sha256()

        def tasks():
            """(block, is-validation flags) and the texts of this part's documents, one block per task."""
            docs, flags, chars, block = [], [], 0, -1
            for index, text in enumerate(corpus.texts()):
                counted["documents"] = index + 1
                hash_document(corpus_hash, text)
                b = index // block_docs
                if docs and (b != block or len(docs) >= _BATCH_DOCS or chars >= _BATCH_CHARS):
                    yield (block, np.array(flags, dtype=bool)), docs
                    docs, flags, chars = [], [], 0
                if b % num_parts != part_index:
                    continue
                block = b
                docs.append(text)
                flags.append(is_validation_doc(index, fraction))
                chars += len(text)
            if docs:
                yield (block, np.array(flags, dtype=bool)), docs

        blocks: list[dict[str, Any]] = []
        writers: dict[str, ShardWriter] = {}
        current = -1

        def close_block() -> None:
            if current >= 0:
                splits = {name: w.close() for name, w in writers.items()}
                blocks.append({"block": current, "splits": {name: _split_json(s) for name, s in splits.items()}})

        bar = tqdm(desc=f"part {part_index}", unit="doc", disable=not cfg.progress, dynamic_ncols=True)
        with bar:
            for (block, flags), ids, lengths in encode_in_order(tasks(), str(staging / TOKENIZER_FILE), workers):
                if block != current:
                    close_block()
                    current = block
                    writers = {
                        name: ShardWriter(
                            directory=staging, split=f"b{block:06d}_{name}", dtype=dtype, shard_tokens=cfg.shard_tokens
                        )
                        for name in ("train", "validation")
                    }
                ends = np.cumsum(lengths)
                starts = ends - lengths
                # One write per run of consecutive documents of one split.
                run_starts = np.flatnonzero(np.r_[True, flags[1:] != flags[:-1]])
                run_ends = np.r_[run_starts[1:], len(flags)]
                for a, b in zip(run_starts, run_ends):
                    writers["validation" if flags[a] else "train"].write(
                        ids[starts[a] : ends[b - 1]], documents=int(b - a)
                    )
                bar.update(len(flags))
            close_block()
        info = {
            "format": PART_FORMAT,
            "num_parts": num_parts,
            "part_index": part_index,
            "block_docs": block_docs,
            "documents": counted["documents"],
            "corpus_sha256": corpus_hash.hexdigest(),
            "tokenizer_sha256": tok.sha256,
            "tokenizer_origin": f"loaded from {cfg.tokenizer.name}",
            "vocab_size": tok.vocab_size,
            "dtype": dtype,
            "eos_id": tok.eos_id,
            "val_fraction": cfg.val_fraction,
            "source": cfg.source_description or corpus.description,
            "license": cfg.license,
            "created_by": f"ngpt_ds {ngpt_ds.__version__}",
            "hash_block_bytes": shard_hashes.BLOCK_BYTES,  # the ShardWriters' default
            "blocks": blocks,
        }
        _write_json(staging / PART_FILE, info)
        # An earlier attempt (--overwrite, checked above) is replaced whole; without --overwrite, a part another
        # job wrote meanwhile is kept and this one refused.
        swap_in(staging, final, overwrite=cfg.overwrite)
    finally:
        remove_staging(staging)
    _say(
        cfg,
        f"part {part_index} of {num_parts}: {len(blocks)} block(s) of {counted['documents']:,} documents -> {final}",
    )
    return final


def _check_same_corpus(out: Path, parts: list[dict[str, Any]]) -> str | None:
    """Parts read from copies of the corpus that differ in content, not in count (a node's copy edited, re-exported
    or of another version at the same path), were merged without a word into a mix of two corpora. Compared only
    when every part recorded the hash: parts written before ngpt_ds hashed the corpus still merge. Returns the
    corpus's hash, recorded in the merged meta.json, or None where a part has none (nothing shows it read the same
    corpus as the others)."""
    hashes: list[str] = [info["corpus_sha256"] for info in parts if info.get("corpus_sha256") is not None]
    if len(hashes) < len(parts):
        return None
    for k, h in enumerate(hashes):
        if h != hashes[0]:
            num_parts = len(parts)
            raise NgptConfigError(
                f"--merge: {part_dir(out, 0, num_parts).name} and {part_dir(out, k, num_parts).name} read different "
                f"corpora (corpus_sha256 {hashes[0][:16]}... and {h[:16]}..., with the same --input and "
                f"{parts[0].get('documents')} documents): every node's copy of the corpus must hold the same "
                "documents in the same order; prepare the parts made from another copy again with --overwrite"
            )
    return hashes[0]


def _split_json(split: SplitMeta) -> dict[str, Any]:
    return {
        "documents": split.documents,
        "tokens": split.tokens,
        "shards": [shard_json(s) for s in split.shards],
    }


def merge_parts(out: Path, num_parts: int, *, overwrite: bool = False, progress: bool = True) -> Path:
    """Merge `out/part-K-of-N/` (K = 0..N-1) into the prepared dataset `out`; return `out`.

    Raises NgptConfigError, before anything changes, for a missing or damaged part, parts that
    disagree (tokenizer, vocab, dtype, validation fraction, corpus, number of parts or documents),
    or an `out` that already holds a dataset (without overwrite).
    """
    out = publish_target(out)
    restore_set_aside(out)  # a merge killed mid-swap: its parts are in the folder put back
    if not (isinstance(num_parts, int) and num_parts >= 1):
        raise NgptConfigError(f"--num-shards {num_parts}: must be a positive integer (the number of parts to merge)")
    missing = [k for k in range(num_parts) if not (part_dir(out, k, num_parts) / PART_FILE).is_file()]
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        raise NgptConfigError(
            f"--merge: {len(missing)} of {num_parts} parts missing in {out}: part(s) {shown} (no "
            f"{part_dir(out, missing[0], num_parts).name}/{PART_FILE}); run launch/prepare_data.py with "
            f"--num-shards {num_parts} --shard-index K for each, then merge again"
        )
    if (out / META_FILE).is_file() and not overwrite:
        raise NgptConfigError(
            f"--out {out} already holds a merged dataset ({META_FILE}); pass --overwrite to replace it with this merge"
        )
    check_holds_no_run(out, "--out", "the merge")  # the merged dataset replaces the folder whole (swap_in)
    parts = [_read_part(part_dir(out, k, num_parts)) for k in range(num_parts)]
    first = parts[0]
    tokenizer_bytes: bytes | None = None
    for k, info in enumerate(parts):
        if info.get("part_index") != k:
            raise NgptConfigError(
                f"{part_dir(out, k, num_parts)}/{PART_FILE}: says part_index "
                f"{info.get('part_index')!r}, expected {k}; prepare that part again"
            )
        if info.get("tokenizer_sha256") != first.get("tokenizer_sha256"):
            raise NgptConfigError(
                f"--merge: the parts were tokenized with different tokenizers: part 0 with sha256 "
                f"{first.get('tokenizer_sha256')}, part {k} with {info.get('tokenizer_sha256')}; prepare every "
                f"part with the same --tokenizer FILE (part {k} again, with --overwrite)"
            )
        for key in _SHARED:
            if info.get(key) != first.get(key):
                raise NgptConfigError(
                    f"--merge: part {k} has {key} = {info.get(key)!r} but part 0 has {first.get(key)!r}; every "
                    "part needs the same --input, options and --num-shards (prepare it again with --overwrite)"
                )
        tok_file = part_dir(out, k, num_parts) / TOKENIZER_FILE
        data = _tokenizer_bytes(tok_file)
        if k == 0:  # the bytes checked are the bytes copied into the dataset: the file is not read again
            tokenizer_bytes = data
        if data is None or hashlib.sha256(data).hexdigest() != info["tokenizer_sha256"]:
            raise NgptConfigError(
                f"{tok_file}: missing or not the tokenizer its {PART_FILE} names; prepare part "
                f"{k} again with --overwrite"
            )
    corpus_sha256 = _check_same_corpus(out, parts)
    block_docs, documents = first["block_docs"], first["documents"]
    n_blocks = -(-documents // block_docs)
    by_block: dict[int, tuple[int, dict[str, Any]]] = {}
    for k, info in enumerate(parts):
        got = [b["block"] for b in info["blocks"]]
        # As many as listed, at most: a crafted `documents` of 10^30 was an OverflowError, 10^9 a 12.5M-item list.
        expected = list(range(k, n_blocks, num_parts)[: max(len(got) + 1, 10)])
        if got != expected:
            raise NgptConfigError(
                f"{part_dir(out, k, num_parts)}/{PART_FILE}: holds blocks {got[:10]}, expected "
                f"{expected[:10]} for {documents} documents; prepare part {k} again"
            )
        by_block.update({b["block"]: (k, b) for b in info["blocks"]})

    dtype = first["dtype"]
    itemsize = DTYPES[dtype].itemsize
    sources = _part_shards(out, num_parts, parts, by_block, n_blocks, itemsize)
    staging = staging_dir(out)
    try:
        splits: dict[str, SplitMeta] = {}
        for name in ("train", "validation"):
            shards: list[ShardMeta] = []
            for src, shard in sources[name][1]:
                dest = f"{name}_{len(shards):06d}.bin"
                _link_or_copy(src, staging / dest)
                shards.append(dataclasses.replace(shard, file=dest))
            docs = sources[name][0]
            splits[name] = SplitMeta(documents=docs, tokens=sum(s.tokens for s in shards), shards=tuple(shards))
        fraction = held_out_fraction(first["val_fraction"])
        if splits["validation"].documents == 0:
            if fraction > 0:
                raise NgptConfigError(
                    f"{first['source']}: only {splits['train'].documents} documents, too few to hold out "
                    f"--val-fraction {first['val_fraction']}; pass --val-fraction 0 or give more documents"
                )
            del splits["validation"]
        assert tokenizer_bytes is not None  # checked against part 0's part.json above
        replace_file(staging / TOKENIZER_FILE, tokenizer_bytes)
        meta = DatasetMeta(
            data_dir=out,
            format_version=FORMAT_VERSION,
            vocab_size=first["vocab_size"],
            dtype=dtype,
            eos_id=first["eos_id"],
            tokenizer_path=TOKENIZER_FILE,
            tokenizer_sha256=first["tokenizer_sha256"],
            tokenizer_origin=first["tokenizer_origin"],
            splits=splits,
            val_fraction=first["val_fraction"],
            source=first["source"],
            license=first.get("license", ""),
            created_by=f"{first['created_by']}, {num_parts} parts merged",
            hash_block_bytes=sources["block_bytes"],
            corpus_sha256=corpus_sha256,  # the merged dataset names the corpus it came from
        )
        write_meta(meta, staging)
        swap_in(staging, out)  # the parts go with the old folder, once the dataset is complete
    finally:
        remove_staging(staging)
    if progress:
        _log.info(f"merged {num_parts} parts\n{meta.summary()}")
    return out


def _link_or_copy(src: Path, dest: Path) -> None:
    """A hard link (no copy; the part keeps its file until the merge is complete), or a copy where
    the filesystem has none."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
