"""A crafted sentencepiece tokenizer.model is one clear error, never a traceback, in the `--format hf`
conversion (ngpt_ds.hf.tokenizer). sentencepiece itself loads a model whose trainer_spec ids are wrong (it
finds the unknown and control pieces by type and name); the conversion indexed the pieces with those ids."""

import re

import pytest
from sentencepiece import sentencepiece_model_pb2

from ngpt_ds.data.tokenizer import Tokenizer
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.hf.tokenizer import build_hf_tokenizer


def _crafted(tiny_dataset, tmp_path, field: str, value: int):
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((tiny_dataset / "tokenizer.model").read_bytes())
    setattr(proto.trainer_spec, field, value)
    path = tmp_path / f"{field}.model"
    path.write_bytes(proto.SerializeToString())
    return path


@pytest.mark.parametrize(
    "field, value, kind",
    [
        ("unk_id", 10**6, "the unknown piece"),  # was IndexError: list index out of range
        ("eos_id", 10**6, "a control piece"),  # was IndexError
        ("pad_id", 512, "a control piece"),  # was IndexError
        ("unk_id", -1, "the unknown piece"),  # was the last piece taken as <unk>, no message
        ("eos_id", 400, "a control piece"),  # was an ordinary piece taken as </s>, no message
    ],
)
def test_a_tokenizer_whose_special_ids_name_no_such_piece_is_named(tiny_dataset, tmp_path, field, value, kind):
    path = _crafted(tiny_dataset, tmp_path, field, value)
    assert Tokenizer.load(path).vocab_size == 512  # sentencepiece accepts it: the conversion must check
    with pytest.raises(NgptConfigError) as err:
        build_hf_tokenizer(path)
    assert str(err.value) == (
        f"tokenizer {path}: trainer_spec.{field} = {value} is not the id of {kind} (the model has 512 pieces); "
        "the file was altered or not written by sentencepiece's trainer"
    )


def test_a_tokenizer_that_is_not_a_protobuf_is_named(tmp_path):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"\xff" * 100)  # was google.protobuf.message.DecodeError
    with pytest.raises(NgptConfigError, match=re.escape(f"tokenizer {path} is not a sentencepiece model (")):
        build_hf_tokenizer(path)


def test_the_trained_tokenizer_converts_with_its_own_special_pieces(tiny_dataset):
    hf = build_hf_tokenizer(tiny_dataset / "tokenizer.model")
    # No pad piece of its own: it pads with </s>, on the left, as the exported generation config does.
    assert (hf.unk_token, hf.eos_token, hf.pad_token, hf.padding_side) == ("<unk>", "</s>", "</s>", "left")
    assert hf.encode("Hello world", add_special_tokens=False) == Tokenizer.load(
        tiny_dataset / "tokenizer.model"
    ).encode("Hello world")
