"""Fault: a config file was hashed by a second read after it was parsed (config_identity.config_file_sha256, called
where the run's config.yaml records config_source_sha256): a file replaced between the two (a colleague editing it,
an rsync of the configs) got the hash of bytes the run was not started from. config_files.read_config_text, which
every model/train YAML and DeepSpeed config passes through, now keeps the sha256 of the very bytes it returned as
text, and parsed_sha256 gives it: read once, parsed and hashed from the same bytes."""

from __future__ import annotations

import hashlib

import pytest

from ngpt_ds import config_files
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.config import load_model_and_train

FIRST = b"model: {n_layer: 2, n_embd: 32, n_head: 2, seq_len: 32}\ntrain: {max_steps: 3}\n"
SECOND = b"model: {n_layer: 4, n_embd: 32, n_head: 2, seq_len: 32}\ntrain: {max_steps: 3}\n"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_hash_is_of_the_bytes_parsed_not_of_the_file_replaced_since(tmp_path, monkeypatch):
    """The config is parsed (n_layer 2), then replaced (n_layer 4) before the hash is asked: the hash is the parsed
    bytes'. Another read of the file is hashed anew."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "exp.yaml"
    path.write_bytes(FIRST)
    model, _, resolved = load_model_and_train(str(path))
    assert model.n_layer == 2
    path.write_bytes(SECOND)
    assert config_files.parsed_sha256(resolved) == _sha(FIRST)
    assert config_files.parsed_sha256(path.relative_to(tmp_path)) == _sha(FIRST)  # the same file by another name
    model, _, _ = load_model_and_train("exp.yaml")
    assert model.n_layer == 4
    assert config_files.parsed_sha256(path) == _sha(SECOND)


def test_a_read_that_failed_leaves_no_hash(tmp_path):
    """A file read once, then replaced by one that is not UTF-8 and read again (refused): no hash of either, not the
    first one's; a file never read has none."""
    path = tmp_path / "a.yaml"
    path.write_bytes(FIRST)
    assert config_files.read_config_text(path, "config") == FIRST.decode()
    assert config_files.parsed_sha256(path) == _sha(FIRST)
    path.write_bytes(b"model: {name: caf\xe9}\n")
    with pytest.raises(NgptConfigError, match="is not UTF-8 text"):
        config_files.read_config_text(path, "config")
    assert config_files.parsed_sha256(path) is None
    assert config_files.parsed_sha256(tmp_path / "never.yaml") is None
