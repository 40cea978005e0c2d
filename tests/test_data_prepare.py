"""prepare_dataset: text -> shards -> tokens -> text, input formats, determinism, atomic writes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from pydoc_data.topics import topics

import datasets
import numpy as np
import pytest

from ngpt_ds.data import prepare as prepare_mod
from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset
from ngpt_ds.data.shards import DatasetMeta, load_dataset_meta
from ngpt_ds.data.tokenizer import Tokenizer

VOCAB = 512
# 40 real documents (CPython's help topics, ~190k characters), always installed.
DOCS = [topics[k] for k in sorted(topics)[:40]]
# val_fraction 0.1 holds out every 10th document: floor((i+1)/10) > floor(i/10).
VAL_IDS = [9, 19, 29, 39]


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({field: d, "id": i}) + "\n")
    return path


def cfg(inputs, out: Path, **kw) -> PrepareConfig:
    kw.setdefault("vocab_size", VOCAB)
    kw.setdefault("val_fraction", 0.1)
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    return PrepareConfig(inputs=tuple(str(i) for i in inputs), out=out, **kw)


def split_tokens(meta: DatasetMeta, split: str) -> np.ndarray:
    return np.concatenate([np.fromfile(meta.shard_path(s), dtype=meta.np_dtype) for s in meta.splits[split].shards])


def decode_docs(meta: DatasetMeta, split: str) -> list[str]:
    """Split a split's token stream at EOS and decode each document."""
    tok = Tokenizer.load(meta.tokenizer_file)
    ids = split_tokens(meta, split)
    assert ids[-1] == meta.eos_id
    ends = np.flatnonzero(ids == meta.eos_id)
    starts = np.r_[0, ends[:-1] + 1]
    return [tok.decode(ids[a:b]) for a, b in zip(starts, ends)]


@pytest.fixture(scope="module")
def jsonl_corpus(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", DOCS)


@pytest.fixture(scope="module")
def prepared(jsonl_corpus, tmp_path_factory) -> Path:
    return prepare_dataset(cfg([jsonl_corpus], tmp_path_factory.mktemp("prep") / "ds"))


def test_round_trip_text_to_shards_to_text(prepared):
    meta = load_dataset_meta(prepared)
    assert decode_docs(meta, "train") == [d for i, d in enumerate(DOCS) if i not in VAL_IDS]
    assert decode_docs(meta, "validation") == [DOCS[i] for i in VAL_IDS]


def test_metadata_records_everything(prepared):
    meta = load_dataset_meta(prepared)
    raw = json.loads((prepared / "meta.json").read_text())
    assert raw["format"] == "ngpt_ds-token-shards" and raw["format_version"] == 1
    assert (meta.vocab_size, meta.dtype, meta.eos_id, meta.tokenizer_path) == (VOCAB, "uint16", 2, "tokenizer.model")
    assert meta.splits["train"].documents == 36 and meta.splits["validation"].documents == 4
    for split in ("train", "validation"):
        (shard,) = meta.splits[split].shards
        assert shard.file == f"{split}_000000.bin"
        assert shard.tokens == meta.splits[split].tokens == (prepared / shard.file).stat().st_size // 2
    assert "docs.jsonl" in meta.source and "'text'" in meta.source
    assert meta.val_fraction == 0.1
    # No staging dirs left beside the output.
    assert sorted(p.name for p in prepared.parent.iterdir()) == ["ds"]


def test_tokenizer_encodes_without_eos_and_round_trips_odd_text(prepared):
    tok = Tokenizer.load(load_dataset_meta(prepared).tokenizer_file)
    text = "  two spaces,\ttab,\nnewline, ünïcödé — and 😀 emoji "
    ids = tok.encode(text)
    assert tok.eos_id not in ids and max(ids) < tok.vocab_size == VOCAB
    assert tok.decode(ids) == text


def test_parallel_workers_and_repeat_runs_give_identical_bytes(jsonl_corpus, prepared, tmp_path):
    """Same corpus and settings -> same tokenizer and shards, whatever the worker count."""
    other = prepare_dataset(cfg([jsonl_corpus], tmp_path / "w2", workers=2))
    for name in ("tokenizer.model", "train_000000.bin", "validation_000000.bin"):
        assert (other / name).read_bytes() == (prepared / name).read_bytes(), name
    a, b = load_dataset_meta(prepared), load_dataset_meta(other)
    assert a.tokenizer_sha256 == b.tokenizer_sha256


def test_small_shards_roll_over_and_existing_tokenizer_is_reused(jsonl_corpus, prepared, tmp_path):
    first = load_dataset_meta(prepared)
    out = prepare_dataset(
        cfg(
            [jsonl_corpus],
            tmp_path / "small",
            vocab_size=None,
            shard_tokens=10_000,
            tokenizer=first.tokenizer_file,
            dtype="uint32",
        )
    )
    meta = load_dataset_meta(out)
    assert meta.tokenizer_sha256 == first.tokenizer_sha256 and meta.vocab_size == VOCAB
    assert meta.tokenizer_origin == "loaded from tokenizer.model"
    assert meta.dtype == "uint32"
    shards = meta.splits["train"].shards
    assert len(shards) == -(-first.splits["train"].tokens // 10_000)
    assert all(s.tokens == 10_000 for s in shards[:-1])
    assert [s.file for s in shards[:2]] == ["train_000000.bin", "train_000001.bin"]
    assert (out / "train_000001.bin").stat().st_size == 40_000
    assert split_tokens(meta, "train").tolist() == split_tokens(first, "train").tolist()


def test_text_files_one_document_per_paragraph(tmp_path):
    paras = [re.sub(r"\n+", "\n", DOCS[i].strip()) for i in range(12)]
    (tmp_path / "a.txt").write_text("\n\n".join(paras[:7]))
    (tmp_path / "b.txt").write_text("\n\n".join(paras[7:]))
    out = prepare_dataset(cfg([tmp_path / "*.txt"], tmp_path / "ds", val_fraction=0.25))
    meta = load_dataset_meta(out)
    # 0.25 holds out docs 3, 7, 11.
    assert decode_docs(meta, "train") == [p for i, p in enumerate(paras) if i not in (3, 7, 11)]
    assert decode_docs(meta, "validation") == [paras[3], paras[7], paras[11]]
    assert "one document per paragraph" in meta.source


def test_parquet_glob_saved_dataset_and_dataset_dir_read_the_same_documents(tmp_path, prepared):
    tok = load_dataset_meta(prepared).tokenizer_file
    docs = DOCS[:20]
    (tmp_path / "pq").mkdir()
    datasets.Dataset.from_dict({"body": docs[:10]}).to_parquet(str(tmp_path / "pq" / "part0.parquet"))
    datasets.Dataset.from_dict({"body": docs[10:]}).to_parquet(str(tmp_path / "pq" / "part1.parquet"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": docs})}).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "repo").mkdir()
    write_jsonl(tmp_path / "repo" / "data.jsonl", docs, field="body")
    expected = [d for i, d in enumerate(docs) if i not in (9, 19)]
    for name, inp in (
        ("pq", tmp_path / "pq" / "*.parquet"),
        ("saved", tmp_path / "saved"),
        ("repo", tmp_path / "repo"),
    ):
        out = prepare_dataset(cfg([inp], tmp_path / f"out-{name}", tokenizer=tok, vocab_size=None, text_field="body"))
        assert decode_docs(load_dataset_meta(out), "train") == expected, name
    assert "saved dataset" in load_dataset_meta(tmp_path / "out-saved").source


def test_val_fraction_zero_writes_train_only(jsonl_corpus, prepared, tmp_path):
    tok = load_dataset_meta(prepared).tokenizer_file
    meta = load_dataset_meta(
        prepare_dataset(cfg([jsonl_corpus], tmp_path / "ds", tokenizer=tok, vocab_size=None, val_fraction=0.0))
    )
    assert list(meta.splits) == ["train"] and meta.splits["train"].documents == 40
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["meta.json", "tokenizer.model", "train_000000.bin"]


class _Interrupt(KeyboardInterrupt):
    pass


def _interrupt_after_first_write(monkeypatch):
    real = prepare_mod.ShardWriter.write
    calls = []

    def write(self, tokens, documents):
        calls.append(1)
        if len(calls) > 1:
            raise _Interrupt
        real(self, tokens, documents)

    monkeypatch.setattr(prepare_mod.ShardWriter, "write", write)
    monkeypatch.setattr(prepare_mod, "_BATCH_DOCS", 4)


def test_interrupted_preparation_leaves_nothing(jsonl_corpus, prepared, tmp_path, monkeypatch):
    tok = load_dataset_meta(prepared).tokenizer_file
    _interrupt_after_first_write(monkeypatch)
    with pytest.raises(_Interrupt):
        prepare_dataset(cfg([jsonl_corpus], tmp_path / "ds", tokenizer=tok, vocab_size=None))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_dataset(jsonl_corpus, prepared, tmp_path, monkeypatch):
    tok = load_dataset_meta(prepared).tokenizer_file
    out = prepare_dataset(cfg([jsonl_corpus], tmp_path / "ds", tokenizer=tok, vocab_size=None, val_fraction=0.0))
    before = (out / "train_000000.bin").read_bytes()
    _interrupt_after_first_write(monkeypatch)
    with pytest.raises(_Interrupt):
        prepare_dataset(cfg([jsonl_corpus], out, tokenizer=tok, vocab_size=None, overwrite=True))
    assert load_dataset_meta(out).val_fraction == 0.0
    assert (out / "train_000000.bin").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_overwrite_replaces_a_complete_dataset(jsonl_corpus, prepared, tmp_path):
    tok = load_dataset_meta(prepared).tokenizer_file
    out = prepare_dataset(cfg([jsonl_corpus], tmp_path / "ds", tokenizer=tok, vocab_size=None, val_fraction=0.0))
    prepare_dataset(cfg([jsonl_corpus], out, tokenizer=tok, vocab_size=None, overwrite=True))
    assert load_dataset_meta(out).splits["validation"].documents == 4
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
