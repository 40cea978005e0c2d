"""Fault: a corpus folder given as --input took minutes to open: datasets' load_dataset_builder (sources._builder_of)
tries each of its split patterns (322 of them) with a walk of the folder and a stat of every file, 145 s for a folder
of 100,000 small files (387 s for 200,000). Where datasets' answer is sure from the folder's own walk (one corpus
format, no name datasets takes for a split's, no dataset card: corpus_folder.train_files), it is taken from that
walk; anywhere else datasets is asked as before. Each tree below is checked against datasets' own answer."""

from __future__ import annotations

import os

import datasets
import pytest
from corpus_trees import jsonl, write_tree

from ngpt_ds.data import corpus_folder
from ngpt_ds.data.corpus_folder import refuse_prepared
from ngpt_ds.data.sources import CorpusSpec, _builder_of, file_format, open_corpus

# name: (files, whether the folder's walk tells datasets' answer)
TREES: dict[str, tuple[dict[str, str], bool]] = {
    "plain nested text": (
        {"b.txt": "b1\n\nb2\n", "a.txt": "a1\n", "sub/c.txt": "c1\n", "sub/deep/d.txt": "d1\n", "z.txt": "z1\n"},
        True,
    ),
    "names holding a keyword inside a word": (
        {"contest.txt": "c\n", "protest/x.txt": "x\n", "devices.txt": "d\n", "retrain1.txt": "r\n"},
        True,
    ),
    "names sorted as datasets sorts them": (
        {"a-b/x.txt": "x\n", "a/y.txt": "y\n", "a.txt": "a\n", "a0.txt": "0\n", "A/z.txt": "z\n"},
        True,
    ),
    "hidden files and folders": (
        {"a.txt": "a\n", ".hidden.txt": "h\n", ".git/x.txt": "g\n", "__cache__/y.txt": "y\n"},
        True,
    ),
    "json lines in a subfolder": ({"docs/p1.jsonl": jsonl("p1"), "docs/p2.jsonl": jsonl("p2", "p3")}, True),
    "two sets of suffixes": ({"a.txt": "a\n", "b.txt": "b\n", "c.txt.gz": "not read\n"}, True),
    "train and other": ({"train.txt": "t\n", "more.txt": "m\n"}, False),
    "test file": ({"a.txt": "a\n", "test.txt": "t\n"}, False),
    "validation folder": ({"validation/x.txt": "v\n", "y.txt": "y\n"}, False),
    "dev after a separator": ({"my-dev.txt": "d\n", "a.txt": "a\n"}, False),
    "keyword before a digit": ({"eval2.txt": "e\n", "a.txt": "a\n"}, False),
    "capitalised keyword": ({"Train.txt": "t\n", "a.txt": "a\n"}, True),  # datasets' patterns match case
    "sharded split names": ({"data/foo-00000-of-00001.txt": "f\n", "b.txt": "b\n"}, False),
    "mixed formats": ({"a.txt": "a\n", "b.jsonl": jsonl("b")}, False),
    "dataset card": ({"a.txt": "a\n", "README.md": "# card\n"}, False),
    "a file datasets ignores": ({"a.jsonl": jsonl("a"), "config.json": "{}"}, False),
    "two suffixes counted": ({"a.json.txt": "a\n", "b.json.txt": "b\n"}, False),
    "a file named __": ({"a.txt": "a\n", "__x.txt": "x\n", "__cache__/y.txt": "y\n"}, True),
    "an unknown extension": ({"a.txt": "a\n", "notes.eval": "e\n"}, False),
    "a .text file": ({"a.text": "a\n"}, False),
}


@pytest.mark.parametrize("tree", sorted(TREES))
def test_the_walk_gives_datasets_answer_or_asks_datasets(tmp_path, tree):
    """Before: every folder asked datasets (no corpus_folder.train_files). Now: where the walk answers, its builder and
    files are datasets' own, same names, same order, all in split 'train'; the other trees still ask datasets."""
    files, known = TREES[tree]
    folder = write_tree(tmp_path / "corpus", files)
    walked = refuse_prepared(folder)
    fast = corpus_folder.train_files(folder, walked, {f: file_format(f) for f in walked.files})
    theirs = _builder_of(folder, CorpusSpec(inputs=(str(folder),)))  # no walk given: datasets' own answer
    assert (fast is not None) == known
    if fast is not None:
        assert theirs is not None and theirs == (fast[0], {"train": fast[1]})
        assert len(fast[1]) == len(walked.files)


def test_a_folder_link_asks_datasets(tmp_path):
    """os.walk does not follow a link to a folder; datasets' walk (fsspec) reads the files behind it."""
    write_tree(tmp_path / "elsewhere", {"x.txt": "x\n"})
    folder = write_tree(tmp_path / "corpus", {"a.txt": "a\n"})
    os.symlink(tmp_path / "elsewhere", folder / "linked")
    walked = refuse_prepared(folder)
    assert walked.unlike_datasets
    assert corpus_folder.train_files(folder, walked, {f: file_format(f) for f in walked.files}) is None


def test_a_folder_through_a_link_is_named_by_its_real_path(tmp_path):
    """datasets names a folder's files under the folder's real path; so does the walk's answer."""
    real = write_tree(tmp_path / "real", {"a.txt": "a\n", "s/b.txt": "b\n"})
    os.symlink(real, tmp_path / "via")
    folder = tmp_path / "via"
    walked = refuse_prepared(folder)
    fast = corpus_folder.train_files(folder, walked, {f: file_format(f) for f in walked.files})
    assert fast == ("text", [f"{real.resolve()}/a.txt", f"{real.resolve()}/s/b.txt"])
    assert _builder_of(folder, CorpusSpec(inputs=(str(folder),))) == (fast[0], {"train": fast[1]})


@pytest.mark.parametrize("by", ["paragraph", "line", "document"])
def test_a_plain_folder_opens_without_datasets_patterns_and_reads_its_documents(tmp_path, patterns_tried, by):
    """Before: open_corpus of a plain folder ran datasets' split patterns (get_data_patterns) at least once, 322
    walks of the folder. Now none; the documents are datasets' own read of the folder, in its order."""
    files, _ = TREES["plain nested text"]
    folder = write_tree(tmp_path / "corpus", files | {"sub/e.txt": "e1\ne2\n\ne3\n"})
    read = open_corpus(CorpusSpec(inputs=(str(folder),), text_sample_by=by))
    ours = list(read.texts())
    assert patterns_tried == []
    stream = datasets.load_dataset(str(folder), split="train", streaming=True, sample_by=by)
    theirs = [row["text"] for row in stream if row["text"]]
    assert ours == theirs
    assert len(ours) == {"paragraph": 8, "line": 9, "document": 6}[by]


def test_a_json_lines_folder_reads_datasets_documents(tmp_path, patterns_tried):
    files, _ = TREES["json lines in a subfolder"]
    folder = write_tree(tmp_path / "corpus", files | {"a.jsonl": jsonl("a1", "a2")})
    ours = list(open_corpus(CorpusSpec(inputs=(str(folder),))).texts())
    assert patterns_tried == []
    assert ours == [row["text"] for row in datasets.load_dataset(str(folder), split="train", streaming=True)]
    assert ours == ["a1", "a2", "p1", "p2", "p3"]


def test_a_folder_with_a_split_name_is_read_from_its_walk_too(tmp_path, patterns_tried):
    """train.txt beside more.txt: datasets reads train.txt alone for split 'train'; the walk tells that too
    (folder_splits, tests/test_data37_split_folders.py), and it is read the same."""
    folder = write_tree(tmp_path / "corpus", {"train.txt": "t1\n\nt2\n", "more.txt": "m\n"})
    ours = list(open_corpus(CorpusSpec(inputs=(str(folder),))).texts())
    assert patterns_tried == []
    assert ours == ["t1", "t2\n"]
