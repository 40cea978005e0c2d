"""sentencepiece tokenizer: train one on a text sample, or load a `.model` file."""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from ngpt_ds.errors import NgptConfigError

MODEL_TYPES = ("bpe", "unigram")
# sentencepiece skips training lines longer than max_sentence_length bytes; we cut lines
# into pieces of at most this many characters (<= 4 bytes each in UTF-8) instead.
_MAX_LINE_CHARS = 4096
_MAX_LINE_BYTES = 4 * _MAX_LINE_CHARS
MAX_MODEL_BYTES = 64 << 20
"""The largest sentencepiece model file read. Real ones are a few MB (a model of 2 million pieces is 31 MB);
sentencepiece reads a file whole, and holds about ten times its size once parsed, before it can say the file
is no model: a 1.5 GB data shard or checkpoint given as the tokenizer held 2 GB for 9 s, then failed."""


class Tokenizer:
    """A loaded sentencepiece model. Ids are ints in [0, vocab_size)."""

    def __init__(self, processor: spm.SentencePieceProcessor, path: Path, model_bytes: bytes | None = None):
        self._sp = processor
        self.path = path
        self.model_bytes = processor.serialized_model_proto() if model_bytes is None else model_bytes
        """The model file's bytes as they were read and parsed: what to copy (into a dataset) or hash."""
        self.sha256 = hashlib.sha256(self.model_bytes).hexdigest()
        """The sha256 of those bytes, not of the file at `path` now: one hashed after the read is another
        file's when the file was replaced in between (a dataset prepared again in place, a copy over it),
        recorded for a tokenizer that was not the one loaded."""

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            # A named pipe, a folder or a device at the name was "not found" (the open is never tried: a pipe
            # would wait for a writer forever); say what is there.
            kind = "not found" if not path.exists() else f"is {_not_a_file(path)}, not a sentencepiece .model file"
            raise NgptConfigError(f"tokenizer {path} {kind}; pass an existing sentencepiece .model file")
        sp = spm.SentencePieceProcessor()
        try:
            data = read_model_bytes(path)
            sp.LoadFromSerializedProto(data)
        except (OSError, RuntimeError, UnicodeDecodeError) as e:
            # sentencepiece's refusal quotes the file's bytes; where they are no UTF-8 the message itself failed
            # to decode, and the UnicodeDecodeError rose from the load as a traceback.
            reason = "its refusal quotes bytes that are not text" if isinstance(e, UnicodeDecodeError) else str(e)
            reason = reason.splitlines()[0]
            if "ParseFromArray" in reason:  # sentencepiece names its own source line; say what Load(path) says
                reason = "could not parse ModelProto"
            raise NgptConfigError(
                f"tokenizer {path} is not a sentencepiece model ({reason}); pass a .model file written by sentencepiece"
            ) from None
        _check_pieces_are_text(sp, path)
        return cls(sp, path, data)

    @property
    def vocab_size(self) -> int:
        return int(self._sp.GetPieceSize())

    @property
    def eos_id(self) -> int:
        """-1 when the model has no EOS piece."""
        return int(self._sp.eos_id())

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no BOS/EOS added."""
        return self._sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])


def _check_pieces_are_text(sp: spm.SentencePieceProcessor, path: Path) -> None:
    """Refuse a model with a piece that is not UTF-8. sentencepiece loads it (the protobuf field holds any bytes),
    and every decode that met the piece raised UnicodeDecodeError: a traceback in the middle of generate.py's
    output, of an lm-eval run, or of ngpt-prepare's workers, which list the pieces. Its trainer writes UTF-8 only,
    so the file was altered. One call for all pieces: 0.03 ms for the 512 of the test tokenizer."""
    size = int(sp.GetPieceSize())
    try:
        sp.id_to_piece(list(range(size)))
        return
    except UnicodeDecodeError:
        pass
    for piece_id in range(size):  # only for a file about to be refused: name the first bad piece
        try:
            sp.id_to_piece(piece_id)
        except UnicodeDecodeError as err:
            raise NgptConfigError(
                f"tokenizer {path}: piece {piece_id} is not UTF-8 text ({err.reason} at byte {err.start}: "
                f"{err.object[: err.end + 8]!r}), which sentencepiece's trainer never writes: the file was altered; "
                "pass the .model file written by sentencepiece"
            ) from None


def _not_a_file(path: Path) -> str:
    """What stands at `path`, which exists and is no regular file."""
    if path.is_dir():
        return "a folder"
    if path.is_fifo():
        return "a named pipe"
    return "a device" if path.is_char_device() or path.is_block_device() else "no regular file"


def read_model_bytes(path: Path) -> bytes:
    """The bytes of the sentencepiece model file at `path`, at most MAX_MODEL_BYTES of them: a larger file is
    an NgptConfigError naming it and its size, before more than that is read (its size on disk is not trusted:
    the read itself stops)."""
    with open(path, "rb") as f:
        data = f.read(MAX_MODEL_BYTES + 1)
    if len(data) > MAX_MODEL_BYTES:
        size = path.stat().st_size
        raise NgptConfigError(
            f"tokenizer {path} is {max(size, len(data)):,} bytes, more than the {MAX_MODEL_BYTES:,} bytes of the "
            "largest sentencepiece model read (real ones are a few MB): it is not a tokenizer (a data shard or a "
            "checkpoint given as the tokenizer?); pass the .model file written by sentencepiece"
        )
    return data


def training_lines(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Non-empty lines of `texts`, cut to sentencepiece's line limit, until max_chars are given."""
    given = 0
    for text in texts:
        for line in text.split("\n"):
            for start in range(0, len(line), _MAX_LINE_CHARS):
                piece = line[start : start + _MAX_LINE_CHARS]
                if not piece.strip():
                    continue
                yield piece
                given += len(piece)
                if given >= max_chars:
                    return


_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


class VocabSizeError(NgptConfigError):
    """The corpus cannot give a tokenizer of the asked vocab: at most (too_large) or at least `bound` pieces."""

    def __init__(self, message: str, *, asked: int, bound: int, too_large: bool):
        super().__init__(message)
        self.asked, self.bound, self.too_large = asked, bound, too_large


def train_tokenizer(
    lines: Iterable[str],
    out_path: Path,
    *,
    vocab_size: int,
    model_type: str = "bpe",
) -> Tokenizer:
    """Train a sentencepiece model on `lines` and write it to out_path.

    Settings chosen for exact round trips of arbitrary text: identity normalization, whitespace
    kept as is, byte fallback on (any character encodes, e.g. '\\n' as <0x0A>). Ids: unk 0,
    bos 1, eos 2, no pad. The same lines and settings give a byte-identical file on any machine:
    one thread, because the thread count is stored in the model and changes unigram pieces.
    """
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            max_sentence_length=_MAX_LINE_BYTES,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as e:
        msg = str(e)
        if m := _TOO_HIGH.search(msg):
            raise VocabSizeError(
                f"--vocab-size {m.group(1)} is too large for this corpus: sentencepiece can make at most "
                f"{m.group(2)} pieces from the training sample; lower --vocab-size to <= {m.group(2)}, "
                "or give more text (--tokenizer-sample-chars, a larger corpus)",
                asked=int(m.group(1)),
                bound=int(m.group(2)),
                too_large=True,
            ) from None
        if m := _TOO_LOW.search(msg):
            raise VocabSizeError(
                f"--vocab-size {m.group(1)} is too small: this corpus needs {m.group(2)} pieces just for its "
                f"characters, 256 byte-fallback pieces and unk/bos/eos; raise --vocab-size to >= {m.group(2)}",
                asked=int(m.group(1)),
                bound=int(m.group(2)),
                too_large=False,
            ) from None
        raise NgptConfigError(f"sentencepiece training failed: {msg.splitlines()[-1]}") from None
    out_path.write_bytes(model.getvalue())
    return Tokenizer.load(out_path)
