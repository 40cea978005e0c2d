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


def _proto(path: Path):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]  # protobuf-generated, no stub
    proto.ParseFromString(path.read_bytes())
    return proto


def build_hf_tokenizer(model_path: str | Path) -> PreTrainedTokenizerFast:
    """A PreTrainedTokenizerFast equivalent to the sentencepiece model at `model_path`."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    path = Path(model_path)
    proto = _proto(path)
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
    pieces = [p.piece for p in proto.pieces]
    if trainer.model_type == 2:  # BPE
        # transformers hints extract() as returning a tuple; it returns a dict (vocab, merges, ...).
        extracted: dict[str, Any] = SentencePieceExtractor(str(path)).extract(models.BPE)  # type: ignore[assignment]
        model: models.Model = models.BPE(
            vocab=extracted["vocab"],
            merges=extracted["merges"],
            unk_token=pieces[trainer.unk_id],
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
    specials = {"unk_token": pieces[trainer.unk_id]}
    if trainer.eos_id >= 0:
        specials["eos_token"] = pieces[trainer.eos_id]
    if trainer.pad_id >= 0:
        specials["pad_token"] = pieces[trainer.pad_id]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        split_special_tokens=True,
        clean_up_tokenization_spaces=False,
        model_max_length=10**9,
        **specials,
    )


def check_same_tokens(hf_tokenizer: PreTrainedTokenizerFast, sp_tokenizer: Tokenizer, texts: Iterable[str]) -> None:
    """Raise NgptConfigError unless both tokenizers give the same ids and decoded text for every text."""
    for text in texts:
        ids, hf_ids = sp_tokenizer.encode(text), hf_tokenizer.encode(text, add_special_tokens=False)
        if ids != hf_ids or sp_tokenizer.decode(ids) != hf_tokenizer.decode(hf_ids):
            raise NgptConfigError(
                f"tokenizer {sp_tokenizer.path}: the transformers conversion tokenizes "
                f"{text[:40]!r} differently ({hf_ids[:8]} vs {ids[:8]})"
            )
