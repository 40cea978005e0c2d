"""A split's fingerprint: one sha256 of what reading that split of a prepared dataset reads.

It covers the split's shard files, their token counts and their block hashes (meta.json), and the dtype and EOS
id; it reads no shard, so it costs nothing at any size, and a dataset moved or copied elsewhere keeps it. A resume
compares the checkpoint's with the data's: the train split's decides whether the saved data position means the
same windows (ngpt_ds.train.preflight), the validation split's whether the evaluations after the resume are
comparable with those before (ngpt_ds.data.loader).
"""

from __future__ import annotations

import hashlib
import json

from ngpt_ds.data.shards import DatasetMeta


def split_fingerprint(data: DatasetMeta, split: str) -> str | None:
    """sha256 of `split` of `data` as its readers read it; for "train" the value ngpt_ds.train.preflight's
    train_data_fingerprint records (config.yaml's train_data_sha256). A split the dataset lacks has the fingerprint
    of no shards, so one removed or added is a change. None when a shard of it carries no block hashes (a dataset
    prepared before ngpt_ds recorded them): `--add-hashes` between a save and a resume is no change."""
    shards = data.splits[split].shards if split in data.splits else ()
    if any(s.sha256_blocks is None for s in shards):
        return None
    record = {
        "dtype": data.dtype,
        "eos_id": data.eos_id,
        "hash_block_bytes": data.hash_block_bytes,
        "shards": [[s.file, s.tokens, list(s.sha256_blocks or ())] for s in shards],
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
