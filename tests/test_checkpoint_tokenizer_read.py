"""Fault: reading a checkpoint's tokenizer from its dataset's meta.json went through the startup check
of the shard contents. A checkpoint whose training dataset has a damaged shard block (the tokenizer
itself intact and hash-checked) could no longer be loaded (generate, export, evaluation on other data) without
--tokenizer ("no tokenizer for ...: ... block(s) of its shards differ"), every load hashed up to 1 GiB
of shards for a file of a few hundred kB, and the resume check of an older checkpoint's tokenizer
(preflight) silently skipped the comparison. Only the tokenizer is read there now.
"""

import shutil

from ngpt_ds.data.shards import load_dataset_meta
from ngpt_ds.infer import loading
from ngpt_ds.train import preflight


def test_a_checkpoints_tokenizer_is_read_from_a_dataset_with_a_damaged_shard(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    sha = load_dataset_meta(data).tokenizer_sha256
    shard = data / "validation_000000.bin"
    shard.write_bytes(bytes(shard.stat().st_size))  # zero-filled after the run trained on it
    tok, expected = loading._checkpoint_tokenizer({"data_dir": str(data)}, tmp_path / "ckpt", None)
    assert (tok.vocab_size, expected) == (512, sha)
    assert preflight._tokenizer_of(str(data)) == sha
