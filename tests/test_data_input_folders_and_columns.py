"""Local corpora as operators have them: a folder of text files, JSON files whose other fields differ, and
one bad file among many, which must be named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ngpt_ds.data import sources
from ngpt_ds.data.sources import CorpusSpec, open_corpus
from ngpt_ds.errors import NgptConfigError

TEXT = "first paragraph of the file\nstill the first\n\nsecond paragraph\n"
PARAGRAPHS = ["first paragraph of the file\nstill the first", "second paragraph\n"]


def _texts(*inputs: str | Path, **kw) -> list[str]:
    return list(open_corpus(CorpusSpec(inputs=tuple(str(i) for i in inputs), **kw)).texts())


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("sample_by", "expected"),
    [
        ("paragraph", PARAGRAPHS),
        ("line", ["first paragraph of the file", "still the first", "second paragraph"]),
        ("document", [TEXT]),
    ],
)
def test_a_folder_of_text_files_is_read_as_its_files_are(tmp_path, sample_by, expected):
    """A folder of .txt files given as --input was read one document per line whatever --text-sample-by said
    (paragraph by default, as for the same files given by a glob): the EOS ids fell between the lines of every
    paragraph, and nothing said so."""
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "a.txt").write_text(TEXT, encoding="utf-8")
    corpus = open_corpus(CorpusSpec(inputs=(str(folder),), text_sample_by=sample_by))
    assert list(corpus.texts()) == expected
    assert list(corpus.texts()) == _texts(folder / "*.txt", text_sample_by=sample_by)
    assert f"one document per {sample_by.replace('document', 'file')}" in corpus.description


def test_a_folder_of_text_files_loses_its_byte_order_mark(tmp_path):
    """The folder's files kept a UTF-8 byte order mark as the first character of their first document, which a
    glob of the same files drops."""
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "a.txt").write_text("\ufeff" + TEXT, encoding="utf-8")
    assert _texts(folder) == PARAGRAPHS


def test_json_files_whose_other_fields_differ_are_all_read(tmp_path, monkeypatch):
    """Files of one corpus with other metadata beside the text (a `url` in some, an `id` that is a number in one
    and a string in another) stopped the preparation with 'could not read it (CastError: Couldn't cast)', when
    the reading came to the second kind of file, hours in on a large corpus; only the text field is used."""
    # 300 rows: more than one batch of a.jsonl is given before the stream reaches b.jsonl and fails.
    _jsonl(tmp_path / "a.jsonl", [{"text": f"a{i}", "id": i} for i in range(300)])
    _jsonl(tmp_path / "b.jsonl", [{"text": f"b{i}", "id": i, "url": "https://example.org"} for i in range(3)])
    _jsonl(tmp_path / "c.jsonl", [{"text": f"c{i}", "id": f"c-{i}"} for i in range(3)] + [{"id": "no text"}])
    told: list[str] = []
    monkeypatch.setattr(sources._log, "warning", told.append)
    assert _texts(tmp_path / "*.jsonl") == [f"a{i}" for i in range(300)] + [f"{f}{i}" for f in "bc" for i in range(3)]
    # The rows the failed stream read before it stopped are not counted twice.
    assert [line.split(": ", 1)[1][:30] for line in told] == ["1 of 307 rows have no 'text' v"]


def test_many_files_are_read_by_few_streams(tmp_path, monkeypatch):
    """Not a fault of the old code (which read all 300 in one stream), a guard on the fix above: a datasets
    stream of its own for every file cost about 0.1 s each (2000 one-document files: 2 s read together, over
    300 s one by one)."""
    import datasets

    for i in range(300):
        (tmp_path / f"{i:03d}.txt").write_text(f"document {i}\n", encoding="utf-8")
    calls = []
    real = datasets.load_dataset
    monkeypatch.setattr(
        datasets, "load_dataset", lambda *a, **kw: calls.append(len(kw["data_files"])) or real(*a, **kw)
    )
    assert _texts(tmp_path / "*.txt", text_sample_by="document") == [f"document {i}\n" for i in range(300)]
    assert calls == [256, 256, 44]  # the check that the corpus is not empty (its first document), then two groups


def test_a_file_without_the_text_field_is_named_with_its_fields(tmp_path):
    """A file among many whose text is under another field was 'could not read it (CastError: Couldn't cast);
    ... check that its extension matches its contents', naming no file and not the field."""
    _jsonl(tmp_path / "a.jsonl", [{"text": f"a{i}"} for i in range(3)])
    bad = _jsonl(tmp_path / "b.jsonl", [{"content": f"b{i}", "id": i} for i in range(3)])
    with pytest.raises(NgptConfigError) as err:
        _texts(tmp_path / "*.jsonl")
    assert str(err.value) == (
        f"json files {tmp_path / '*.jsonl'} (2 files), text field 'text': no text field 'text' in {bad}; its "
        "fields are content, id; pass --text-field with one of them, or leave that file out"
    )


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    """One text file of a glob that is not UTF-8 (Latin-1, a binary) stopped the preparation naming the glob
    alone: with thousands of files, the one to fix or remove was left to be found by hand."""
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "b.txt").write_bytes("caf\u00e9 cr\u00e8me\n".encode("latin-1"))
    (tmp_path / "c.txt").write_text(TEXT, encoding="utf-8")
    with pytest.raises(NgptConfigError) as err:
        _texts(tmp_path / "*.txt")
    assert str(err.value).startswith(
        f"text files {tmp_path / '*.txt'} (3 files), one document per paragraph: could not read "
        f"{tmp_path / 'b.txt'} (UnicodeDecodeError: 'utf-8' codec can't decode byte 0xe9 in position 3"
    )
    assert str(err.value).endswith("; fix or remove that file, or check that its extension matches its contents")


def test_a_prepared_dataset_given_as_the_corpus_is_named(tiny_dataset):
    """A prepared dataset's folder given as --input (to prepare it again with another vocab) stopped with
    'could not read it (DataFilesNotFoundError: No (supported) data files found in ...); check the name,
    --config and --split; for a hub name, check that this machine can reach the hub'."""
    with pytest.raises(NgptConfigError) as err:
        open_corpus(CorpusSpec(inputs=(str(tiny_dataset),)))
    assert str(err.value) == (
        f"--input {tiny_dataset} is a dataset prepared by ngpt_ds (token shards and meta.json), not a corpus; "
        "pass the corpus it was prepared from (its meta.json names it under 'source')"
    )


def test_a_corpus_folder_holding_a_prepared_dataset_is_named(tiny_dataset):
    """A corpus folder that holds a dataset prepared from it (`--input corpus --out corpus/ds`, then prepared
    again with another vocab) was 'No (supported) data files found in corpus', its corpus.jsonl right there: the
    shards' names (train_000000.bin) made datasets look for splits."""
    folder = tiny_dataset.parent
    assert (folder / "corpus.jsonl").is_file()
    with pytest.raises(NgptConfigError) as err:
        open_corpus(CorpusSpec(inputs=(str(folder),)))
    assert str(err.value) == (
        f"--input {folder} holds {tiny_dataset}, a dataset prepared by ngpt_ds, and a folder is read whole; pass "
        f"the corpus files by a glob (e.g. {folder}/*.jsonl), or move the dataset out of the folder"
    )


def test_rows_without_the_text_field_are_counted_and_named(tmp_path, capsys):
    """Rows of a JSONL that hold their text under another field (`content` in every third row here), or a null,
    were left out without a word: a third of the corpus went missing and the preparation said it was done."""
    from pydoc_data.topics import topics

    from ngpt_ds.cli.prepare import main

    docs = [topics[k] for k in sorted(topics)[:40]]
    corpus = _jsonl(tmp_path / "c.jsonl", [{"content" if i % 3 == 0 else "text": d} for i, d in enumerate(docs)])
    argv = ["--input", str(corpus), "--out", str(tmp_path / "ds"), "--vocab-size", "512", "--workers", "1"]
    assert main([*argv, "--val-fraction", "0.1"]) == 0
    line = (
        f"json files {corpus} (1 file), text field 'text': 14 of 40 rows have no 'text' value (null, or the field "
        "missing from the row) and were left out; if their text is under another field, pass --text-field or fix "
        "those rows"
    )
    assert capsys.readouterr().err.count(line) == 1  # the whole pass, not the tokenizer's sample of it
