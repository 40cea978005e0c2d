"""The tokenizer a dataset records is the one that was read: its hash and its copy come from the bytes loaded.

Fault: Tokenizer.load read the model file, and the callers took its sha256 (shards.sha256_file) and its copy
(shutil.copyfile) by reading the file again, separately: a tokenizer file replaced in between (a dataset
prepared again in place, a copy over it) gave another file's hash and copy for the tokenizer that was loaded
and checked.
"""

import hashlib
import json
import os
from pathlib import Path

import pytest

from ngpt_ds.data import parts
from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset
from ngpt_ds.data.shards import load_dataset_meta
from ngpt_ds.data.tokenizer import Tokenizer


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def corpus_and_tokenizers(tmp_path_factory):
    """A corpus, and two tokenizers of it: vocab 512 and vocab 400."""
    import pydoc_data.topics

    root = tmp_path_factory.mktemp("files20_tok")
    corpus = root / "corpus.jsonl"
    with corpus.open("w") as f:
        for text in pydoc_data.topics.topics.values():
            f.write(json.dumps({"text": text}) + "\n")
    made = {}
    for vocab in (512, 400):
        cfg = PrepareConfig(
            inputs=(str(corpus),), out=root / f"v{vocab}", vocab_size=vocab, val_fraction=0.1, workers=1, progress=False
        )
        made[vocab] = (prepare_dataset(cfg) / "tokenizer.model").read_bytes()
    return corpus, made


def replace_with(path: Path, data: bytes) -> None:
    path.with_name("swap").write_bytes(data)
    os.replace(path.with_name("swap"), path)


def given_then_replaced_after_load(module, made: dict, tmp_path: Path, monkeypatch) -> Path:
    """tmp_path/given.model, the vocab-512 tokenizer, which `module`'s Tokenizer.load loads and then sees replaced by
    the vocab-400 one: the race each caller must survive by keeping the bytes it loaded."""
    given = tmp_path / "given.model"
    given.write_bytes(made[512])
    real_load = Tokenizer.load

    def load_then_replaced(path):
        tok = real_load(path)
        if Path(path) == given:
            replace_with(given, made[400])
        return tok

    monkeypatch.setattr(module.Tokenizer, "load", load_then_replaced)
    return given


def test_the_sha256_of_a_loaded_tokenizer_is_that_of_the_bytes_read(corpus_and_tokenizers, tmp_path):
    """Fault: no hash of the bytes read; callers hashed the file again. Now: Tokenizer.sha256 and model_bytes
    are the loaded model's, also after the file was replaced."""
    _, made = corpus_and_tokenizers
    path = tmp_path / "tokenizer.model"
    path.write_bytes(made[512])
    tok = Tokenizer.load(path)
    replace_with(path, made[400])
    assert (tok.vocab_size, tok.sha256, tok.model_bytes) == (512, sha256(made[512]), made[512])


def test_a_part_records_and_keeps_the_tokenizer_it_checked(corpus_and_tokenizers, tmp_path, monkeypatch):
    """Fault: prepare_part loaded and checked --tokenizer, then copied the file again into the part, encoded with
    the copy and hashed it. Before, with the file replaced right after the load: part.json said vocab_size 512
    with the sha256 of the vocab-400 tokenizer, which encoded the part. Now: the part holds, records and
    encodes with the vocab-512 tokenizer that was checked."""
    corpus, made = corpus_and_tokenizers
    given = given_then_replaced_after_load(parts, made, tmp_path, monkeypatch)
    cfg = PrepareConfig(
        inputs=(str(corpus),), out=tmp_path / "parts", tokenizer=given, val_fraction=0.1, workers=1, progress=False
    )
    folder = parts.prepare_part(cfg, 1, 0)
    info = json.loads((folder / "part.json").read_text())
    assert (info["vocab_size"], info["tokenizer_sha256"]) == (512, sha256(made[512]))
    assert (folder / "tokenizer.model").read_bytes() == made[512]


def test_a_merge_copies_the_tokenizer_it_checked(corpus_and_tokenizers, tmp_path, monkeypatch):
    """Fault: merge_parts hashed part 0's tokenizer.model against its part.json, then copied the file again.
    Before, with the file replaced after the check: the merged dataset held the vocab-400 tokenizer under
    part.json's sha256 of the vocab-512 one, and reading it failed the tokenizer hash check. Now: the merged
    dataset holds the bytes checked and reads back."""
    corpus, made = corpus_and_tokenizers
    given = tmp_path / "given.model"
    given.write_bytes(made[512])
    out = tmp_path / "parts"
    cfg = PrepareConfig(inputs=(str(corpus),), out=out, tokenizer=given, val_fraction=0.1, workers=1, progress=False)
    for k in range(2):
        parts.prepare_part(cfg, 2, k, block_docs=40)
    real_part_shards = parts._part_shards

    def shards_after_part_0_tokenizer_replaced(*args):
        replace_with(parts.part_dir(out, 0, 2) / "tokenizer.model", made[400])
        return real_part_shards(*args)

    monkeypatch.setattr(parts, "_part_shards", shards_after_part_0_tokenizer_replaced)
    parts.merge_parts(out, 2, progress=False)
    assert (out / "tokenizer.model").read_bytes() == made[512]
    meta = load_dataset_meta(out)
    assert (meta.vocab_size, meta.tokenizer_sha256) == (512, sha256(made[512]))


def test_a_dataset_keeps_the_tokenizer_it_checked(corpus_and_tokenizers, tmp_path, monkeypatch):
    """Fault: prepare_dataset checked --tokenizer's vocabulary against --vocab-size, then copied the file again
    (shutil.copyfile) and hashed the copy. Before, with the file replaced right after the check: the dataset
    held the vocab-400 tokenizer although --vocab-size 512 had been checked against the other one. Now: the
    dataset holds, records and encodes with the vocab-512 tokenizer that was checked."""
    from ngpt_ds.data import prepare

    corpus, made = corpus_and_tokenizers
    given = given_then_replaced_after_load(prepare, made, tmp_path, monkeypatch)
    cfg = PrepareConfig(
        inputs=(str(corpus),),
        out=tmp_path / "data",
        tokenizer=given,
        vocab_size=512,
        val_fraction=0.1,
        workers=1,
        progress=False,
    )
    out = prepare_dataset(cfg)
    assert (out / "tokenizer.model").read_bytes() == made[512]
    meta = load_dataset_meta(out)
    assert (meta.vocab_size, meta.tokenizer_sha256) == (512, sha256(made[512]))
