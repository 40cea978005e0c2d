"""Fault (session 32): a sentencepiece model holding bytes that are not UTF-8 where the library expects text.

- A piece that is not UTF-8: sentencepiece loads the model (the protobuf field holds any bytes), and every decode
  that met the piece raised UnicodeDecodeError: a traceback in the middle of generate.py's output or of an lm-eval
  run, and in ngpt-prepare's workers, which list every piece. Tokenizer.load now refuses the file, naming the piece.
- A byte piece whose name is not UTF-8 (`<0x95` followed by 0xF8): sentencepiece's own refusal quotes it, and
  decoding that message raised UnicodeDecodeError out of the load, a traceback instead of the "not a sentencepiece
  model" refusal.

Both files were found by flipping bytes of a trained model in a subprocess per file (ninety files: none aborted
or crashed the interpreter; these two raised).
"""

import subprocess
import sys

import pytest
import sentencepiece as spm

from ngpt_ds.data.tokenizer import Tokenizer
from ngpt_ds.errors import NgptConfigError

from conftest import REPO, cpu_env

MARK = "QQQQ"


def piece_not_text(tiny_dataset, tmp_path):
    """The test tokenizer with one of its pieces renamed to bytes that are not UTF-8 (same length, so the
    protobuf's lengths hold); returns (path, the piece's id)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((tiny_dataset / "tokenizer.model").read_bytes())
    piece_id = next(i for i, p in enumerate(proto.pieces) if p.type == p.NORMAL and i > 300)
    proto.pieces[piece_id].piece = MARK
    data = proto.SerializeToString()
    assert data.count(MARK.encode()) == 1
    path = tmp_path / "piece.model"
    path.write_bytes(data.replace(MARK.encode(), b"\xa7QQQ"))
    return path, piece_id


def test_a_piece_that_is_not_utf8_is_refused_at_load_naming_it(tiny_dataset, tmp_path):
    path, piece_id = piece_not_text(tiny_dataset, tmp_path)
    raw = spm.SentencePieceProcessor(model_file=str(path))  # what the old Tokenizer.load accepted
    assert raw.decode([5, 6]) == spm.SentencePieceProcessor(model_file=str(tiny_dataset / "tokenizer.model")).decode(
        [5, 6]
    )
    with pytest.raises(UnicodeDecodeError):
        raw.decode([piece_id])  # the traceback generate.py met when it sampled the piece
    with pytest.raises(NgptConfigError) as err:
        Tokenizer.load(path)
    assert str(err.value) == (
        f"tokenizer {path}: piece {piece_id} is not UTF-8 text (invalid start byte at byte 0: b'\\xa7QQQ'), which "
        "sentencepiece's trainer never writes: the file was altered; pass the .model file written by sentencepiece"
    )


def test_a_refusal_quoting_bytes_that_are_not_text_is_the_plain_refusal(tiny_dataset, tmp_path):
    data = (tiny_dataset / "tokenizer.model").read_bytes()
    assert data.count(b"<0x95>") == 1
    path = tmp_path / "byte.model"
    path.write_bytes(data.replace(b"<0x95>", b"<0x95\xf8"))
    with pytest.raises(NgptConfigError) as err:  # the old load: UnicodeDecodeError out of LoadFromSerializedProto
        Tokenizer.load(path)
    assert str(err.value) == (
        f"tokenizer {path} is not a sentencepiece model (its refusal quotes bytes that are not text); pass a .model "
        "file written by sentencepiece"
    )


def test_prepare_with_such_a_tokenizer_stops_at_startup_in_words(tiny_dataset, tmp_path):
    path, piece_id = piece_not_text(tiny_dataset, tmp_path)
    (tmp_path / "text.txt").write_text("In the beginning was the word.\n" * 200)
    cmd = [sys.executable, str(REPO / "launch/prepare_data.py"), "--input", str(tmp_path / "text.txt")]
    cmd += ["--tokenizer", str(path), "--out", str(tmp_path / "data")]
    result = subprocess.run(cmd, env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"tokenizer {path}: piece {piece_id} is not UTF-8 text" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "meta.json").exists()
