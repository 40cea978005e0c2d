"""The sha256 a run records of its config file is that of the bytes it parsed (lead, session 35).

Fault: the trainer parsed its YAML config, then hashed the file by reading it again (config_identity.
config_file_sha256) for `config_source_sha256` in <out>/config.yaml and for matching a run folder to its config. A
file replaced between the two reads (a colleague editing it, an rsync of a shared folder) was recorded with the hash
of settings the run never used, and a requeue with those edited settings then passed for the same config. The hash
now comes from the bytes the parse read (config_files.parsed_sha256, helper reads35's 67c0927).
"""

import hashlib

from ngpt_ds.model.config import load_model_config
from ngpt_ds.train.config_identity import config_file_sha256, same_config_file


def test_the_hash_is_of_the_parsed_bytes_not_of_the_file_replaced_since(tmp_path):
    config = tmp_path / "run.yaml"
    parsed = b"model:\n  arch: ngpt\n  n_layer: 2\n  n_embd: 32\n  n_head: 2\n  seq_len: 32\n"
    config.write_bytes(parsed)
    model = load_model_config(str(config))
    assert model.n_layer == 2
    config.write_bytes(parsed.replace(b"n_layer: 2", b"n_layer: 9"))  # replaced after the parse
    # old code: the sha256 of the n_layer 9 file
    assert config_file_sha256(config) == hashlib.sha256(parsed).hexdigest()
    # a run folder recorded from the parsed bytes, its config path since gone (another node's mount): the same file
    gone = tmp_path / "elsewhere" / "run.yaml"
    assert same_config_file(gone, config, hashlib.sha256(parsed).hexdigest())
    assert not same_config_file(gone, config, hashlib.sha256(b"other").hexdigest())


def test_a_file_this_process_never_parsed_is_read(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_bytes(b"model: {}\n")
    assert config_file_sha256(other) == hashlib.sha256(b"model: {}\n").hexdigest()
    assert config_file_sha256(tmp_path / "missing.yaml") is None
