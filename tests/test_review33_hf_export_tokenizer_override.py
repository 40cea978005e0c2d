"""Fault (b764f19, ngpt_ds/hf/as_loaded.py): the ngpt_ds lm-eval model reading a `--format hf` export took
tokenizer=FILE.model without comparing it with the sentencepiece sha256 the export's config.json records
(ngpt_ds_export.tokenizer_sha256): another tokenizer of the same vocabulary size (512 pieces, other pieces) was
accepted, and every loglikelihood was scored on token ids that mean other text. The native export and a checkpoint
refuse it ("is not the one ... was trained with ... both have 512 pieces"); the hf export now does too."""

import pytest

from ngpt_ds.errors import NgptConfigError


@pytest.fixture(scope="module")
def same_size_tokenizer(tmp_path_factory):
    """A sentencepiece model of 512 pieces (the tiny dataset's size) trained on other text."""
    import pydoc_data.topics

    from ngpt_ds.data.tokenizer import train_tokenizer

    texts = list(pydoc_data.topics.topics.values())
    tok = train_tokenizer(iter(texts[: len(texts) // 3]), tmp_path_factory.mktemp("tok") / "v512.model", vocab_size=512)
    assert tok.vocab_size == 512
    return tok.path


def test_another_tokenizer_of_the_same_size_is_refused(random_hf_export, same_size_tokenizer):
    from ngpt_ds.hf.as_loaded import load_hf_export

    with pytest.raises(NgptConfigError, match=r"is not the one .* was trained with .* both have 512 pieces"):
        load_hf_export(random_hf_export, tokenizer=same_size_tokenizer)


def test_the_models_own_tokenizer_is_taken(random_hf_export, tiny_dataset):
    from ngpt_ds.data.tokenizer import Tokenizer
    from ngpt_ds.hf.as_loaded import load_hf_export

    own = tiny_dataset / "tokenizer.model"
    loaded = load_hf_export(random_hf_export, tokenizer=own)
    assert loaded.tokenizer_sha256 == Tokenizer.load(own).sha256
    assert loaded.tokenizer.encode("In the beginning") == Tokenizer.load(own).encode("In the beginning")
