"""Local input files as operators have them: one named twice, a UTF-8 byte order mark."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset
from ngpt_ds.data.sources import CorpusSpec, open_corpus
from ngpt_ds.data.tokenizer import Tokenizer
from ngpt_ds.errors import NgptConfigError

TEXT = "first paragraph of the file\nstill the first\n\nsecond paragraph\n"


def _texts(*inputs: str, **kw) -> list[str]:
    return list(open_corpus(CorpusSpec(inputs=inputs, **kw)).texts())


@pytest.mark.parametrize("how", ["same name", "glob and name", "two globs", "link"])
def test_a_file_given_twice_is_refused_before_anything_is_written(tmp_path, how):
    """Read twice, a file's documents were doubled silently and each document held out for validation in one
    copy was trained on in the other (the split follows the document's index): 4 documents in, 8 read."""
    data = tmp_path / "data"
    data.mkdir()
    a = data / "a.txt"
    a.write_text(TEXT, encoding="utf-8")
    (data / "b.txt").write_text("other file\n", encoding="utf-8")
    os.symlink(a, data / "link.txt")
    inputs = {
        "same name": (str(a), str(a)),
        "glob and name": (str(a), str(data / "[ab].txt")),
        "two globs": (str(data / "a*"), str(data / "*.txt")),
        "link": (str(a), str(data / "link.txt")),
    }[how]
    again = {"same name": a, "glob and name": a, "two globs": a, "link": data / "link.txt"}[how]
    with pytest.raises(NgptConfigError) as e:
        _texts(*inputs)
    assert str(e.value) == (
        f"--input {inputs[1]!r} names {again} again (already given by --input {inputs[0]!r}): its documents "
        "would be read twice and validation documents would reappear in training; give each file once"
    )
    out = tmp_path / "out"
    with pytest.raises(NgptConfigError, match="names .* again"):
        prepare_dataset(PrepareConfig(inputs=inputs, out=out, vocab_size=300, workers=1, progress=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no out, no staging folder


def test_distinct_files_are_all_read_once(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "b.txt").write_text("other file\n", encoding="utf-8")
    assert _texts(str(tmp_path / "a.txt"), str(tmp_path / "b.txt")) == [
        "first paragraph of the file\nstill the first",
        "second paragraph\n",
        "other file\n",
    ]


@pytest.mark.parametrize("sample_by", ["paragraph", "line", "document"])
@pytest.mark.parametrize("compressed", [False, True])
def test_a_text_files_byte_order_mark_is_not_text(tmp_path, sample_by, compressed):
    """A UTF-8 BOM (Notepad writes one) began the first document of the file as U+FEFF, which the tokenizer
    then learned and the model trained on; the json and csv readers drop it. CRLF line ends read as LF."""
    raw = b"\xef\xbb\xbf" + TEXT.replace("\n", "\r\n").encode()
    path = tmp_path / ("bom.txt.gz" if compressed else "bom.txt")
    path.write_bytes(gzip.compress(raw) if compressed else raw)
    texts = _texts(str(path), text_sample_by=sample_by)
    plain = tmp_path / "plain.txt"
    plain.write_text(TEXT, encoding="utf-8")
    assert texts == _texts(str(plain), text_sample_by=sample_by)
    assert texts[0].startswith("first paragraph of the file")
    assert not any("\ufeff" in t for t in texts)


def test_a_byte_order_mark_inside_a_document_is_kept(tmp_path):
    """Only a document's leading U+FEFF is a file's mark; one inside the text is the writer's."""
    path = tmp_path / "mid.txt"
    path.write_text("a\ufeffb\n", encoding="utf-8")
    assert _texts(str(path)) == ["a\ufeffb\n"]


def test_the_prepared_shards_hold_no_byte_order_mark(tmp_path):
    path = tmp_path / "bom.txt"
    body = "".join(f"paragraph {i} about the byte order mark\n\n" for i in range(60))
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    out = prepare_dataset(
        PrepareConfig(inputs=(str(path),), out=tmp_path / "ds", vocab_size=300, workers=1, progress=False)
    )
    tok = Tokenizer.load(Path(out) / "tokenizer.model")
    ids = np.fromfile(Path(out) / "train_000000.bin", dtype="<u2")
    first = ids[: int(np.flatnonzero(ids == tok.eos_id)[0])]
    assert tok.decode(first) == "paragraph 0 about the byte order mark"


def test_split_given_with_local_files_is_refused(tmp_path):
    """load_dataset puts local files in one split named 'train': `--split validation` was ignored and every
    document of the files was prepared (200 of 200), with no word."""
    path = tmp_path / "a.jsonl"
    path.write_text("".join(f'{{"text": "doc {i}"}}\n' for i in range(200)), encoding="utf-8")
    with pytest.raises(NgptConfigError) as e:
        _texts(str(path), split="validation")
    assert str(e.value) == (
        "--split 'validation': local files have no splits, each is read whole; pass the files of that split as "
        "--input and drop --split"
    )
    assert len(_texts(str(path), split="train")) == 200  # the default names the one split there is


def test_split_given_with_a_saved_dataset_of_one_split_is_refused(tmp_path):
    """A folder of Dataset.save_to_disk (not a DatasetDict) was read whole whatever --split said, and the
    source recorded in meta.json said "split 'validation'"."""
    import datasets

    datasets.Dataset.from_dict({"text": [f"doc {i}" for i in range(50)]}).save_to_disk(str(tmp_path / "sv"))
    with pytest.raises(NgptConfigError) as e:
        _texts(str(tmp_path / "sv"), split="validation")
    assert str(e.value) == (
        f"--split 'validation': --input {tmp_path / 'sv'} is a saved Dataset, not a DatasetDict of splits; it is "
        "read whole: drop --split"
    )
    assert len(_texts(str(tmp_path / "sv"))) == 50
    named = datasets.Dataset.from_dict({"text": ["a", "b"]}, split=datasets.NamedSplit("validation"))
    named.save_to_disk(str(tmp_path / "val"))
    assert _texts(str(tmp_path / "val"), split="validation") == ["a", "b"]  # its own split's name is fine


def test_a_file_named_with_glob_characters_is_that_file_alone_or_in_a_glob(tmp_path):
    """Fault: an --input holding [, ? or * was always a pattern, for ngpt_ds and again for datasets' data_files:
    `a[b].jsonl` read `ab.jsonl` instead, and `*.jsonl` over both read `ab.jsonl` twice and `a[b].jsonl` never (the
    duplicate local_inputs.resolve_files refuses, with a validation document trained on in the other copy), with "(2 files)"."""
    (tmp_path / "a[b].jsonl").write_text('{"text": "FROM a[b]"}\n', encoding="utf-8")
    (tmp_path / "ab.jsonl").write_text('{"text": "FROM ab"}\n', encoding="utf-8")
    assert _texts(str(tmp_path / "a[b].jsonl")) == ["FROM a[b]"]
    assert sorted(_texts(str(tmp_path / "*.jsonl"))) == ["FROM a[b]", "FROM ab"]
    (tmp_path / "ab.jsonl").unlink()
    assert _texts(str(tmp_path / "a[b].jsonl")) == ["FROM a[b]"]  # was "no files match this pattern"


def test_a_folder_with_a_state_json_that_datasets_cannot_load_is_an_error_naming_it(tmp_path):
    """Fault: a folder holding a file named state.json (a common name; datasets' save_to_disk marker) went to
    datasets.load_from_disk, whose FileNotFoundError reached the user as a traceback."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"text": "hello"}\n', encoding="utf-8")
    (folder / "state.json").write_text('{"step": 3}', encoding="utf-8")
    with pytest.raises(NgptConfigError) as refused:
        open_corpus(CorpusSpec(inputs=(str(folder),)))
    assert str(refused.value).startswith(
        f"--input {folder} looks like a folder written by datasets' save_to_disk but could not be loaded "
        "(FileNotFoundError: "
    )
    assert str(refused.value).endswith(f"; repair or re-save it, or pass its files (e.g. {folder}/*.jsonl)")
    assert _texts(str(folder / "*.jsonl")) == ["hello"]
