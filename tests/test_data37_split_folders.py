"""Fault: a corpus folder with a file or folder named after a split (train.txt, validation/, my-dev.txt, ...) still
took datasets' slow path at open (sources._builder_of: load_dataset_builder tries its 322 split patterns, a walk of
the folder and a stat of every file each: about 150 s for 100,000 files), where the folder's one walk tells datasets'
answer exactly (folder_splits.walked_splits reads datasets' own patterns and matches them as fsspec's glob does).
Each tree below is checked against datasets' own answer: the builder, the splits, their files in datasets' order."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
from corpus_trees import jsonl, write_tree

from ngpt_ds.data.corpus_folder import refuse_prepared
from ngpt_ds.data.sources import CorpusSpec, _builder_of, file_format, open_corpus

# name: (files, whether the walk answers; the others ask datasets)
TREES: dict[str, tuple[dict[str, str], bool]] = {
    "train and other files": ({"train.txt": "t\n", "more.txt": "m\n", "sub/x.txt": "x\n"}, True),
    "train and test files": ({"train.txt": "t\n", "test.txt": "e\n", "a/valid_1.txt": "v\n"}, True),
    "every keyword in file names": (
        {
            "training-1.txt": "a\n",
            "x.dev.txt": "b\n",
            "val 2.txt": "c\n",
            "my_evaluation.txt": "d\n",
            "testing.txt": "e\n",
            "eval0.txt": "f\n",
            "retrain.txt": "g\n",
        },
        True,
    ),
    "split folders win over split files": (
        {"train/a.txt": "a\n", "train/b.txt": "b\n", "test.txt": "t\n", "validation/c.txt": "c\n"},
        True,
    ),
    "split folders nested and named with separators": (
        {
            "data/train/a.txt": "a\n",
            "data/train/deep/b.txt": "b\n",
            "data/my-test/c.txt": "c\n",
            "data/dev_2/d.txt": "d\n",
            "data/other/e.txt": "e\n",
        },
        True,
    ),
    "a file two patterns match is listed twice": (
        {"train/x-train/a.txt": "a\n", "train/b.txt": "b\n", "x-train-y/c.txt": "c\n"},
        True,
    ),
    "a file in two splits": ({"train/test/a.txt": "a\n", "train/b.txt": "b\n", "test/c.txt": "c\n"}, True),
    "capitalised split names are not splits": ({"Train/a.txt": "a\n", "TEST.txt": "t\n", "b.txt": "b\n"}, True),
    "a keyword file without a separator after it": ({"train": "t\n", "a.txt": "a\n", "dev/b.txt": "b\n"}, False),
    "json lines in split folders": (
        {"train/p1.jsonl": jsonl("p1"), "train/p2.jsonl": jsonl("p2"), "validation/v.jsonl": jsonl("v")},
        True,
    ),
    "two sets of suffixes in a split": (
        {"train/a.txt": "a\n", "train/b.txt.gz": "", "test/c.txt": "c\n"},
        True,
    ),
    "hidden and special folders under a split": (
        {"train/a.txt": "a\n", "train/.h/b.txt": "b\n", "train/__c/c.txt": "c\n", ".test/d.txt": "d\n"},
        True,
    ),
    "a split of another format": ({"train/a.txt": "a\n", "test/b.jsonl": jsonl("b")}, False),
    "split names with a dataset card": ({"train.txt": "t\n", "README.md": "# card\n"}, False),
    "sharded split names": ({"data/train-00000-of-00001.txt": "t\n", "test.txt": "e\n"}, False),
}


@pytest.mark.parametrize("tree", sorted(TREES))
def test_a_split_named_folder_is_answered_by_its_walk_as_datasets_answers(tmp_path, patterns_tried, tree):
    """Before: every split-named tree asked datasets (get_data_patterns tried once: 'assert [...] == []' failed). Now
    the walk's answer is datasets' own, the same builder, splits, file names, order and repeats."""
    files, known = TREES[tree]
    folder = write_tree(tmp_path / "corpus", files)
    walked = refuse_prepared(folder)
    ours = _builder_of(folder, CorpusSpec(inputs=(str(folder),)), walked, {f: file_format(f) for f in walked.files})
    assert patterns_tried == ([] if known else [str(folder.resolve())])
    theirs = _builder_of(folder, CorpusSpec(inputs=(str(folder),)))  # no walk given: datasets' own answer
    assert ours == theirs
    if known:
        assert ours is not None and ours[1]  # a folder datasets reads, with at least one split


def test_the_trees_have_what_their_names_say(tmp_path):
    """The trees above test what they name: a file listed twice, a file in two splits, folders winning."""
    found = {}
    for tree in (
        "a file two patterns match is listed twice",
        "a file in two splits",
        "split folders win over split files",
    ):
        folder = write_tree(tmp_path / tree.replace(" ", "_"), TREES[tree][0])
        walked = refuse_prepared(folder)
        result = _builder_of(
            folder, CorpusSpec(inputs=(str(folder),)), walked, {f: file_format(f) for f in walked.files}
        )
        assert result is not None
        base = folder.resolve()
        found[tree] = {split: [str(Path(f).relative_to(base)) for f in files] for split, files in result[1].items()}
    assert found["a file two patterns match is listed twice"] == {
        "train": ["train/b.txt", "train/x-train/a.txt", "train/x-train/a.txt", "x-train-y/c.txt"]
    }
    assert found["a file in two splits"] == {
        "train": ["train/b.txt", "train/test/a.txt"],
        "test": ["test/c.txt", "train/test/a.txt"],
    }
    assert found["split folders win over split files"] == {
        "train": ["train/a.txt", "train/b.txt"],
        "validation": ["validation/c.txt"],
    }


@pytest.mark.parametrize("split", ["train", "validation"])
def test_a_split_named_folder_opens_without_datasets_patterns_and_reads_its_split(tmp_path, patterns_tried, split):
    """Before: open_corpus of a folder with train/ and validation/ ran datasets' split patterns. Now none; the
    documents of --split are datasets' own read of that split, in its order."""
    folder = write_tree(
        tmp_path / "corpus",
        {"train/b.txt": "b1\n\nb2\n", "train/a.txt": "a1\n", "validation/v.txt": "v1\n\nv2\n", "notes.txt": "n\n"},
    )
    ours = list(open_corpus(CorpusSpec(inputs=(str(folder),), split=split)).texts())
    assert patterns_tried == []
    stream = datasets.load_dataset(str(folder), split=split, streaming=True, sample_by="paragraph")
    assert ours == [row["text"] for row in stream if row["text"]]
    assert ours == {"train": ["a1\n", "b1", "b2\n"], "validation": ["v1", "v2\n"]}[split]
