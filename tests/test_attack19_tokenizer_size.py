"""A file given as the tokenizer is read only up to the size of the largest sentencepiece model."""

import os

import pytest

from ngpt_ds.data.tokenizer import MAX_MODEL_BYTES, Tokenizer
from ngpt_ds.errors import NgptConfigError


def test_a_file_larger_than_any_tokenizer_is_refused_before_it_is_read(tmp_path):
    """Fault: Tokenizer.load handed the path to sentencepiece, which reads a file whole (and holds about ten
    times a model's size once parsed) before it can say the file is no model. Before: a 1.5 GB file given as
    the tokenizer (a data shard, a checkpoint) held 2 GB for 9 s, then 'is not a sentencepiece model (INTERNAL:
    could not parse ModelProto from ...)'. Now: at most MAX_MODEL_BYTES + 1 bytes are read, and the error
    names the file, its size and the fix."""
    path = tmp_path / "train_000000.bin"
    with open(path, "wb") as f:
        f.truncate(MAX_MODEL_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(NgptConfigError) as err:
        Tokenizer.load(path)
    assert str(err.value) == (
        f"tokenizer {path} is 67,108,865 bytes, more than the 67,108,864 bytes of the largest sentencepiece "
        "model read (real ones are a few MB): it is not a tokenizer (a data shard or a checkpoint given as the "
        "tokenizer?); pass the .model file written by sentencepiece"
    )


def test_a_tokenizer_of_the_largest_size_read_is_still_parsed(tmp_path, tiny_dataset):
    """The cap refuses only what is larger: a file of exactly MAX_MODEL_BYTES reaches sentencepiece (here a
    real model padded with an unknown protobuf field, which sentencepiece skips)."""
    model = (tiny_dataset / "tokenizer.model").read_bytes()
    # Field 999, wire type 2 (length-delimited): tag varint, length varint, then the payload.
    tag = bytes([(999 << 3 | 2) & 0x7F | 0x80, (999 << 3 | 2) >> 7])
    room = MAX_MODEL_BYTES - len(model) - len(tag)
    length = room - 4  # a 4-byte varint length
    assert length < 1 << 28
    varint = bytes([length & 0x7F | 0x80, length >> 7 & 0x7F | 0x80, length >> 14 & 0x7F | 0x80, length >> 21])
    path = tmp_path / "tokenizer.model"
    with open(path, "wb") as f:
        f.write(model + tag + varint)
        f.truncate(MAX_MODEL_BYTES)
    assert os.path.getsize(path) == MAX_MODEL_BYTES
    loaded = Tokenizer.load(path)
    assert loaded.vocab_size == 512
    assert loaded.encode("Hello world") == Tokenizer.load(tiny_dataset / "tokenizer.model").encode("Hello world")


def test_a_file_that_is_no_model_keeps_its_reason(tmp_path):
    """The model is parsed from the bytes read: a file that is no protobuf still says so (sp.Load added "from PATH", already named)."""
    path = tmp_path / "junk.model"
    path.write_bytes(b"\xff" * 100)
    with pytest.raises(NgptConfigError) as err:
        Tokenizer.load(path)
    assert str(err.value) == (
        f"tokenizer {path} is not a sentencepiece model (could not parse ModelProto); "
        "pass a .model file written by sentencepiece"
    )


def test_the_hf_export_reads_a_tokenizer_no_further_than_the_cap(tmp_path):
    """The transformers conversion parses the sentencepiece proto itself. Fault: it read the file whole
    (`path.read_bytes()`), with no bound, where Tokenizer.load now stops at the cap."""
    pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")
    from ngpt_ds.hf.tokenizer import build_hf_tokenizer

    path = tmp_path / "tokenizer.model"
    with open(path, "wb") as f:
        f.truncate(MAX_MODEL_BYTES + 1)
    with pytest.raises(NgptConfigError, match=r"is 67,108,865 bytes, more than the 67,108,864 bytes"):
        build_hf_tokenizer(path)
