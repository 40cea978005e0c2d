"""A prepared part's folder, and what the merge reads back from it: its part.json, its tokenizer.model and the
shards its part.json lists, each checked before the merge uses it (ngpt_ds.data.parts writes them).

A part's folder is `part-K-of-N/` under --out; its part.json, written last, marks it complete.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ngpt_ds.data import shard_hashes
from ngpt_ds.data.capped_json import MAX_JSON_BYTES, read_capped_json
from ngpt_ds.data.shards import DTYPES, hash_problems, parse_shard, whole
from ngpt_ds.data.tokenizer import read_model_bytes
from ngpt_ds.errors import NgptConfigError

PART_FILE = "part.json"
PART_FORMAT = "ngpt_ds-token-part"


def part_dir(out: Path, index: int, num_parts: int) -> Path:
    return Path(out) / f"part-{index:05d}-of-{num_parts:05d}"


def tokenizer_bytes(path: Path) -> bytes | None:
    """The bytes of a part's tokenizer.model, None when it is not a regular file or is larger than any
    sentencepiece model (read_model_bytes)."""
    if not path.is_file():
        return None
    try:
        return read_model_bytes(path)
    except NgptConfigError:
        return None


MAX_PART_BYTES = MAX_JSON_BYTES
"""The largest part.json read: a part lists a share of the shards a dataset's meta.json lists. A larger file
(a 256 MiB one) was read whole and held twice over (512 MiB, as bytes and as text) before it was refused."""


def read_part(folder: Path) -> dict[str, Any]:
    """The part.json of the part in `folder`: read no further than MAX_PART_BYTES, and refused, naming the file and
    the fix, when it is not JSON, not a part's, or wrong in a field the merge computes with."""
    path = folder / PART_FILE
    info = read_capped_json(path, f"a part's {PART_FILE}", "prepare that part again with --overwrite", MAX_PART_BYTES)
    if not isinstance(info, dict) or info.get("format") != PART_FORMAT:
        raise NgptConfigError(f"{path}: not a part written by ngpt_ds; prepare that part again with --overwrite")
    # The fields the merge computes with: a crafted or damaged value stopped it with a TypeError or
    # ZeroDivisionError traceback.
    wrong = [
        f"{key} = {info.get(key)!r}: {must}"
        for key, ok, must in (
            ("block_docs", _count(info.get("block_docs"), 1), "must be a positive integer"),
            ("documents", _count(info.get("documents"), 0), "must be an integer >= 0"),
            ("dtype", info.get("dtype") in DTYPES, f"must be one of {sorted(DTYPES)}"),
            ("tokenizer_sha256", isinstance(info.get("tokenizer_sha256"), str), "must be a sha256"),
            # Absent in a part written before ngpt_ds hashed the corpus: the merge then does not compare corpora.
            (
                "corpus_sha256",
                info.get("corpus_sha256") is None or _is_sha256(info.get("corpus_sha256")),
                "must be a sha256",
            ),
            (
                "hash_block_bytes",
                info.get("hash_block_bytes") is None or _count(info.get("hash_block_bytes"), 1),
                "must be a positive integer",
            ),
            (
                "blocks",
                isinstance(info.get("blocks"), list)
                and all(isinstance(b, dict) and _count(b.get("block"), 0) for b in info["blocks"]),
                "must be a list of {block: number, splits: ...}",
            ),
        )
        if not ok
    ]
    if wrong:
        raise NgptConfigError(f"{path}: {'; '.join(wrong)}; prepare that part again with --overwrite")
    return info


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _count(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def part_shards(
    out: Path, num_parts: int, parts: list[dict[str, Any]], by_block: dict, n_blocks: int, itemsize: int
) -> dict[str, Any]:
    """split -> (documents, [(source file, shard with its block hashes)]) in block order, and "block_bytes".

    Each shard must be a plain file name in its part's folder, not a link: the merge links or copies what
    part.json names into the dataset, and a crafted part.json naming `/home/me/secret` or `../../x` put
    that file into the dataset as a shard. Hashes recorded by the part are carried over once well formed;
    a part written before ngpt_ds recorded them is hashed here."""
    found: dict[str, Any] = {"block_bytes": shard_hashes.BLOCK_BYTES}
    recorded = [info.get("hash_block_bytes") for info in parts]
    carried = recorded[0] is not None and all(r == recorded[0] for r in recorded)
    if carried:
        found["block_bytes"] = recorded[0]
    for name in ("train", "validation"):
        docs, listed = 0, []
        for b in range(n_blocks):
            k, block = by_block[b]
            folder = part_dir(out, k, num_parts)
            where = f"{folder / PART_FILE} block {b} {name}"
            try:
                split = block["splits"].get(name, {"documents": 0, "shards": []})
                docs += whole(split["documents"], "documents")
                shards = [parse_shard(raw) for raw in split["shards"]]
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise NgptConfigError(
                    f"{where}: malformed ({type(e).__name__}: {e}); prepare part {k} again with --overwrite"
                ) from None
            for shard in shards:
                src = folder / shard.file
                if shard.file in ("", ".", "..") or "/" in shard.file or "\\" in shard.file or src.is_symlink():
                    raise NgptConfigError(
                        f"{where}: shard {shard.file!r} must be a file name inside {folder}, not a path or a link; "
                        f"the {PART_FILE} is damaged or was edited: prepare part {k} again with --overwrite"
                    )
                if not src.is_file() or src.stat().st_size != shard.tokens * itemsize:
                    raise NgptConfigError(
                        f"{src}: missing or not {shard.tokens} tokens as {PART_FILE} says; "
                        f"prepare part {k} again with --overwrite"
                    )
                if carried:
                    fix = f"the {PART_FILE} is damaged or was edited: prepare part {k} again with --overwrite"
                    bad = hash_problems([(f"{where} shard {shard.file!r}", shard)], found["block_bytes"], itemsize, fix)
                    if bad:
                        raise NgptConfigError(bad[0])
                else:
                    shard = dataclasses.replace(
                        shard, sha256_blocks=shard_hashes.block_hashes(src, found["block_bytes"])
                    )
                listed.append((src, shard))
        found[name] = (docs, listed)
    return found
