"""The `--format hf` export converts the tokenizer bytes that were loaded and checked, not the file at their path.

Fault: ngpt_ds.hf.export.write_hf_export built tokenizer.json from `tokenizer.path` (build_hf_tokenizer read the
file again), after the loader had read the file and checked its sha256 against the model's. A tokenizer file
replaced in between (a dataset prepared again in place, a copy over it) was the one converted: the export of a
model with its right tokenizer failed ('the transformers conversion tokenizes ... differently') or, had the
replacing file tokenized the probe texts alike, shipped another tokenizer than the model's.
"""

import io
import os
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

TEXT = "The with statement wraps a block; lambda and yield are keywords. 12.5e-3 </s> ünïcödé"


def _other_bpe(vocab_size: int) -> bytes:
    """A BPE sentencepiece model trained as ngpt_ds trains one (identity normalization, byte fallback), of the
    same size, on other text (the pydoc topics reversed, line by line): another tokenizer of the same shape."""
    import pydoc_data.topics

    lines = [line[::-1] for text in pydoc_data.topics.topics.values() for line in text.splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines[:3000]),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        byte_fallback=True,
        minloglevel=2,
    )
    return model.getvalue()


def test_hf_export_converts_the_loaded_tokenizer_bytes_not_the_file_replaced_after_the_load(tiny_dataset, tmp_path):
    """Fault: write_hf_export built tokenizer.json from the file at tokenizer.path. Replaced after the load by
    another BPE model of the same size, the export failed its token check; now it converts the bytes loaded, and
    the exported tokenizer gives the loaded tokenizer's ids."""
    from transformers import PreTrainedTokenizerFast

    from ngpt_ds.data.tokenizer import Tokenizer
    from ngpt_ds.hf.export import write_hf_export
    from ngpt_ds.infer import LoadedModel
    from ngpt_ds.model import ModelConfig, build_model

    path = tmp_path / "tokenizer.model"
    own = (tiny_dataset / "tokenizer.model").read_bytes()
    path.write_bytes(own)
    tok = Tokenizer.load(path)
    other = _other_bpe(tok.vocab_size)
    replaced = Tokenizer(spm.SentencePieceProcessor(model_proto=other), path, other)
    assert replaced.vocab_size == tok.vocab_size == 512
    assert replaced.encode(TEXT) != tok.encode(TEXT)
    path.with_name("swap.tmp").write_bytes(other)
    os.replace(path.with_name("swap.tmp"), path)  # the file is replaced after the load and its check

    torch.manual_seed(0)
    config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    folder = tmp_path / "hf"
    folder.mkdir()
    loaded = LoadedModel(
        model=build_model(config).eval(),
        config=config,
        tokenizer=tok,
        tokenizer_sha256=tok.sha256,
        source=tmp_path,
        kind="export",
    )
    write_hf_export(loaded, folder, name="hf")

    exported = PreTrainedTokenizerFast.from_pretrained(folder)
    ids = exported.encode(TEXT, add_special_tokens=False)
    assert ids == tok.encode(TEXT)
    assert ids != replaced.encode(TEXT)
    assert exported.decode(ids) == tok.decode(ids) == TEXT
    assert Path(path).read_bytes() == other  # the file on disk stayed the replacing one
