"""The sentencepiece model of the training data as a transformers tokenizer (a `tokenizer.json`
for `PreTrainedTokenizerFast`), giving the same ids and the same decoded text.

ngpt_ds trains its sentencepiece model (ngpt_ds/data/tokenizer.py) with identity normalization,
whitespace kept as is, a dummy-prefix space and byte fallback. The `tokenizers` pipeline below
is that: prepend "▁", replace " " with "▁", the sentencepiece pieces and merges (BPE) with byte
fallback; decoding undoes it and drops the dummy-prefix space. A model trained with other
normalization settings is refused rather than converted approximately, and so is a unigram model:
tokenizers' Unigram breaks ties between equally scored segmentations otherwise than sentencepiece.

Special tokens: `</s>` is the end of a document (training separates documents with it) and
`<unk>` the unknown piece. ngpt_ds never feeds `<s>`, so the tokenizer names no BOS, and lm-eval
uses `</s>` as the prefix of an empty context, as ngpt_ds's own lm-eval adapter does. Text that
spells a control token ("</s>") is tokenized as text, as sentencepiece does.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ngpt_ds.errors import NgptConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from ngpt_ds.data.tokenizer import Tokenizer

# What the conversion is checked on at export, besides the caller's own text.
PROBE_TEXTS = ("Hello world", " two  spaces\n\n\ttab ", "ünïcödé 日本語 😀 </s> <unk> 12.5e-3", "", "\n")


_UNKNOWN, _CONTROL = 2, 3
"""sentencepiece's ModelProto.SentencePiece.Type of the unknown piece and of control pieces (</s>, <pad>)."""


def _proto(path: Path, data: bytes):
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]  # protobuf-generated, no stub
    try:
        proto.ParseFromString(data)
    except DecodeError as err:
        raise NgptConfigError(f"tokenizer {path} is not a sentencepiece model ({err}); {_ALTERED}") from None
    return proto


_ALTERED = "the file was altered or not written by sentencepiece's trainer"


def _special_piece(path: Path, proto: Any, field: str, optional: bool) -> str | None:
    """The piece trainer_spec.`field` (unk_id, eos_id, pad_id) names; None for an absent optional one (-1).
    sentencepiece finds these pieces by their type and name, not by these ids, so it loads a model whose ids
    are wrong; indexing with them raised IndexError, or with -1 took the last piece as the unknown token."""
    index, pieces = getattr(proto.trainer_spec, field), proto.pieces
    if optional and index == -1:
        return None
    expected = _CONTROL if optional else _UNKNOWN
    if not 0 <= index < len(pieces) or pieces[index].type != expected:
        kind = "a control piece" if optional else "the unknown piece"
        raise NgptConfigError(
            f"tokenizer {path}: trainer_spec.{field} = {index} is not the id of {kind} "
            f"(the model has {len(pieces)} pieces); {_ALTERED}"
        )
    return str(pieces[index].piece)


def build_hf_tokenizer(model_path: str | Path, model_bytes: bytes | None = None) -> PreTrainedTokenizerFast:
    """A PreTrainedTokenizerFast equivalent to the sentencepiece model `model_bytes` (a loaded Tokenizer's
    model_bytes, named by its `model_path` in messages), else to the file at `model_path`, read once. The file is
    not read again after: a tokenizer replaced on disk after it was loaded and checked (its sha256 against the
    model's) was converted in its place (write_hf_export built from the path)."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    from ngpt_ds.data.tokenizer import read_model_bytes

    path = Path(model_path)
    # Bounded: a data shard or a checkpoint given as the tokenizer is not read whole.
    data = read_model_bytes(path) if model_bytes is None else model_bytes
    proto = _proto(path, data)
    norm, trainer = proto.normalizer_spec, proto.trainer_spec
    if (
        norm.name != "identity"
        or not norm.add_dummy_prefix
        or norm.remove_extra_whitespaces
        or trainer.treat_whitespace_as_suffix
        or not trainer.byte_fallback
    ):
        raise NgptConfigError(
            f"tokenizer {path}: only sentencepiece models trained as ngpt_ds trains them (identity normalization, "
            "a dummy prefix, whitespace kept, byte fallback) convert exactly to a transformers tokenizer"
        )
    unk = _special_piece(path, proto, "unk_id", optional=False)
    eos = _special_piece(path, proto, "eos_id", optional=True)
    pad = _special_piece(path, proto, "pad_id", optional=True)
    if trainer.model_type == 2:  # BPE
        extracted = _extract_bpe(data, models.BPE)
        model: models.Model = models.BPE(
            vocab=extracted["vocab"],
            merges=extracted["merges"],
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=True,
        )
    elif trainer.model_type == 1:  # unigram
        raise NgptConfigError(
            f"tokenizer {path}: a unigram sentencepiece model does not convert exactly to a transformers "
            "tokenizer: where two segmentations score the same ('*' + '***********' and '***********' + '*'), "
            "tokenizers' Unigram picks another than sentencepiece, so the model would be fed ids it was not "
            "trained on. Export with --format ngpt_ds (ngpt-generate, ngpt-lm-eval read it), or prepare the "
            "data with --tokenizer-type bpe"
        )
    else:
        raise NgptConfigError(
            f"tokenizer {path}: sentencepiece model type {trainer.model_type} is neither BPE nor "
            "unigram; ngpt_ds trains only those"
        )
    backend = Tokenizer(model)
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = {"unk_token": unk}
    if eos is not None:
        specials["eos_token"] = eos
    # The pad piece, else `</s>` as the exported generation_config pads with: without one,
    # tokenizer(prompts, padding=True) raised "Asking to pad but the tokenizer does not have a padding token".
    # Padding goes on the left, where generate() appends after the last real token of every prompt.
    filler = pad if pad is not None else eos
    if filler is not None:
        specials["pad_token"] = filler
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        padding_side="left",
        split_special_tokens=True,
        clean_up_tokenization_spaces=False,
        model_max_length=10**9,
        **specials,
    )


def _extract_bpe(data: bytes, bpe: Any) -> dict[str, Any]:
    """transformers' SentencePieceExtractor on the model `data`: it reads its model from a file, so the bytes go to
    one of its own in a private temporary folder (not the file they were loaded from, which may have changed)."""
    import tempfile

    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    with tempfile.TemporaryDirectory(prefix="ngpt_ds_tokenizer_") as folder:
        copy = Path(folder) / "tokenizer.model"
        copy.write_bytes(data)
        # transformers hints extract() as returning a tuple; it returns a dict (vocab, merges, ...).
        return SentencePieceExtractor(str(copy)).extract(bpe)  # type: ignore[return-value]


def check_same_tokens(hf_tokenizer: PreTrainedTokenizerFast, sp_tokenizer: Tokenizer, texts: Iterable[str]) -> None:
    """Raise NgptConfigError unless both tokenizers give the same ids and decoded text for every text."""
    for text in texts:
        ids, hf_ids = sp_tokenizer.encode(text), hf_tokenizer.encode(text, add_special_tokens=False)
        if ids != hf_ids or sp_tokenizer.decode(ids) != hf_tokenizer.decode(hf_ids):
            raise NgptConfigError(
                f"tokenizer {sp_tokenizer.path}: the transformers conversion tokenizes "
                f"{text[:40]!r} differently ({hf_ids[:8]} vs {ids[:8]})"
            )
