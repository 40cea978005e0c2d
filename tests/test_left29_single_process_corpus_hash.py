"""Fault (left29): a single-process `prepare_dataset` recorded no `corpus_sha256` in meta.json, while a preparation
split into parts and merged did (ngpt_ds.data.parts): the same corpus prepared on one node named no corpus, and
two datasets of it could not be told to come from the same documents. The single process now hashes the stream it
tokenizes as each part does (ngpt_ds.data.prepare.hash_document), so both ways give the same corpus_sha256.

Old code: KeyError 'corpus_sha256' on the single-process meta.json (and DatasetMeta.corpus_sha256 None).
Old datasets without the field still load (None), merge with parts, and keep their training-data fingerprint.
"""

import json

from test_data_parts import config, single_and_parts, write_corpus
from test_part27_corpus_mismatch import corpus_documents, expected_hash

from ngpt_ds.data.parts import merge_parts
from ngpt_ds.data.prepare import prepare_dataset
from ngpt_ds.data.shards import load_dataset_meta
from ngpt_ds.train.preflight import train_data_fingerprint

NUM_PARTS, BLOCK_DOCS = 2, 40


def test_one_process_and_parts_record_the_same_corpus_hash(tmp_path, tiny_dataset):
    corpus = write_corpus(tmp_path)
    single, parted = single_and_parts(corpus, tmp_path, tiny_dataset / "tokenizer.model", NUM_PARTS, BLOCK_DOCS)
    merge_parts(parted, NUM_PARTS, progress=False)

    want = expected_hash(corpus_documents(corpus))  # sha256 of what the reader consumed: length, then bytes
    assert json.loads((single / "meta.json").read_text())["corpus_sha256"] == want  # old code: KeyError
    assert load_dataset_meta(single).corpus_sha256 == want
    assert load_dataset_meta(parted).corpus_sha256 == want


def test_a_trained_tokenizer_run_hashes_the_tokenized_stream_once(tiny_dataset):
    """conftest's tiny_dataset trains its tokenizer (a first pass over the corpus): the hash is of the stream
    tokenized, each document once, not of both passes."""
    want = expected_hash(corpus_documents(tiny_dataset.parent / "corpus.jsonl"))
    assert load_dataset_meta(tiny_dataset).corpus_sha256 == want


def test_an_old_dataset_without_the_field_stays_valid(tmp_path, tiny_dataset):
    """A meta.json written before the field: it loads (None), and the training-data fingerprint a resume compares
    is the same with and without it, so a resume across the upgrade (or a dataset prepared again) is not refused."""
    corpus = write_corpus(tmp_path)
    data = prepare_dataset(config(corpus, tmp_path / "data", tiny_dataset / "tokenizer.model"))
    new = load_dataset_meta(data)
    raw = json.loads((data / "meta.json").read_text())
    del raw["corpus_sha256"]
    (data / "meta.json").write_text(json.dumps(raw, indent=2) + "\n")
    old = load_dataset_meta(data)
    assert old.corpus_sha256 is None
    assert new.corpus_sha256 == expected_hash(corpus_documents(corpus))
    assert train_data_fingerprint(old) == train_data_fingerprint(new) is not None
