"""Fault: a corpus folder given as --input was read through load_dataset(FOLDER) at every pass, and datasets resolves
the folder's files anew each time (for each split name it knows, a walk of the folder and a stat of every file): a
folder of 20,000 small files took some 50 s each time, at the probe of its builder, at the check that it holds a
document, at the tokenizer's sample and at the tokenizing (and in every --num-shards part). The files datasets
resolved at the probe are now read as a glob's files are, where that reads what the folder's read does (all of the
builder's format, no dataset card, no --config); a folder with a README.md is still read through datasets."""

from __future__ import annotations

import json

import datasets
import pytest

from ngpt_ds.data.sources import CorpusSpec, open_corpus


@pytest.fixture
def resolutions(monkeypatch):
    """The paths datasets.load_dataset_builder is asked for (by ngpt_ds, and by load_dataset)."""
    asked: list[str] = []
    real = datasets.load.load_dataset_builder

    def counted(path, *args, **kwargs):
        asked.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(datasets.load, "load_dataset_builder", counted)
    monkeypatch.setattr(datasets, "load_dataset_builder", counted)
    return asked


def _folder(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    for name, texts in (("b.jsonl", ["b1", "b2"]), ("a.jsonl", ["a1"]), ("sub/c.jsonl", ["c1", "c2", "c3"])):
        (corpus / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return corpus


def test_a_folder_is_resolved_once_for_every_pass(tmp_path, resolutions):
    """Before: the folder was resolved 4 times for the open and two passes (probe, check, each pass). Now once; the
    documents are datasets' own read of the folder, in its order."""
    corpus = _folder(tmp_path)
    read = open_corpus(CorpusSpec(inputs=(str(corpus),)))
    first, second = list(read.texts()), list(read.texts())
    # Not once since its walk tells datasets' answer (corpus_folder.train_files): datasets is not asked at all.
    assert resolutions.count(str(corpus)) == 0
    stream = datasets.load_dataset(str(corpus), split="train", streaming=True)
    assert first == second == [row["text"] for row in stream] == ["a1", "b1", "b2", "c1", "c2", "c3"]


def test_a_folder_with_a_dataset_card_is_still_read_by_datasets(tmp_path, resolutions):
    """A README.md may set what the folder's read does beyond its files (configs, features): read through datasets,
    resolved at every pass as before."""
    corpus = _folder(tmp_path)
    (corpus / "README.md").write_text("# a corpus\n", encoding="utf-8")
    read = open_corpus(CorpusSpec(inputs=(str(corpus),)))
    assert list(read.texts()) == ["a1", "b1", "b2", "c1", "c2", "c3"]
    assert resolutions.count(str(corpus)) == 3
