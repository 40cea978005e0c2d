"""Fault: a corpus folder given as --input was walked three times before datasets read it (local_inputs.refuse_prepared,
then local_inputs.folder_files for the files datasets does not read, and again for the json line or text document
check), each file looked at with a stat each time: on a network filesystem a folder of a million files is a stat
each, three times over. It is walked once (refuse_prepared returns a CorpusFolder) and its files passed along."""

from __future__ import annotations

import json
import os

import pytest

from ngpt_ds.data import local_inputs
from ngpt_ds.data.sources import CorpusSpec, open_corpus
from ngpt_ds.errors import NgptConfigError


def test_a_corpus_folder_is_walked_once(tmp_path, monkeypatch):
    """Before: os.walk of the folder three times (refuse_prepared, then folder_files for the files datasets does not
    read and again for the json line check). Now once, and what it found does the rest: the file in no split is
    still named, the long line still refused."""
    walked: list[str] = []
    walk = os.walk

    def counted(top, *args, **kwargs):
        walked.append(str(top))
        return walk(top, *args, **kwargs)

    monkeypatch.setattr(os, "walk", counted)
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "train.jsonl").write_text(json.dumps({"text": "one"}) + "\n", encoding="utf-8")
    (corpus / "sub" / "train.jsonl").write_text(json.dumps({"text": "two"}) + "\n", encoding="utf-8")
    read = open_corpus(CorpusSpec(inputs=(str(corpus),)))
    assert walked.count(str(corpus)) == 1
    assert sorted(read.texts()) == ["one", "two"]
    (corpus / "sub" / "long.jsonl").write_text(json.dumps({"text": "x" * 100}) + "\n", encoding="utf-8")
    monkeypatch.setattr(local_inputs, "MAX_JSON_LINE_BYTES", 50)
    walked.clear()
    with pytest.raises(NgptConfigError, match=r"long\.jsonl'?: line 1 is 0 MiB"):
        open_corpus(CorpusSpec(inputs=(str(corpus),)))
    assert walked.count(str(corpus)) == 1
