"""Fault: sources._resolved_files looked at every file of a corpus folder again (os.path.isfile, a stat each) right
after the folder's walk had looked at each (refuse_prepared): cheap on tmpfs, a network round trip a file on NFS or
Lustre (100,000 of them for a folder of 100,000 files). A file the walk found a file is not looked at again; a name
datasets gives that the walk did not see is still checked, and a split whose files are not all local files of the
builder's format is still read through datasets."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest

from ngpt_ds.data.corpus_folder import refuse_prepared
from ngpt_ds.data.sources import CorpusSpec, _resolved_files, open_corpus


@pytest.fixture
def stats(monkeypatch):
    """os.stat calls of .txt files, by real path (os.path.isfile, getsize, ... call os.stat; os.walk does not)."""
    counts: collections.Counter[str] = collections.Counter()
    real = os.stat

    def counted(path, *args, **kwargs):
        if not isinstance(path, int) and os.fspath(path).endswith(".txt"):
            counts[os.path.realpath(path)] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counted)
    return counts


def _folder(root: Path, n: int) -> Path:
    for i in range(n):
        path = root / f"s{i % 3}" / f"f{i:03d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"document {i}\n", encoding="utf-8")
    return root


@pytest.mark.parametrize("layout", ["plain", "split folders"])
def test_the_folder_files_are_stated_once_by_the_open(tmp_path, stats, layout):
    """Before: each file past the first read group (256 files, which datasets' read looks at itself) was stated twice
    at the open, by the walk and by _resolved_files: 'assert {2: 44} == {1: 44}'. Now once, by the walk."""
    corpus = tmp_path / "corpus"
    _folder(corpus / ("train" if layout == "split folders" else ""), 300)
    if layout == "split folders":
        _folder(corpus / "test", 6)
    read = open_corpus(CorpusSpec(inputs=(str(corpus),)))
    assert read.kind == "files" and len(read._files) == 300
    unread = [os.path.realpath(f) for f in read._files[256:]]
    assert dict(collections.Counter(stats[f] for f in unread)) == {1: 44}
    assert list(read.texts())[-1] == f"document {int(Path(read._files[-1]).stem[1:])}\n"


def test_a_name_the_walk_did_not_see_is_still_checked(tmp_path):
    """datasets' list holds a name that is not a local file (gone, or not the walk's): the folder is read through
    datasets, as before; a file of another format likewise."""
    corpus = _folder(tmp_path / "corpus", 3)
    walked = refuse_prepared(corpus)
    spec = CorpusSpec(inputs=(str(corpus),))
    names = sorted(f"{corpus.resolve().as_posix()}/{Path(f).relative_to(corpus).as_posix()}" for f in walked.files)
    assert _resolved_files(corpus, spec, ("text", {"train": names}), walked) == names
    gone = f"{corpus.resolve().as_posix()}/s0/gone.txt"
    assert _resolved_files(corpus, spec, ("text", {"train": [*names, gone]}), walked) is None
    assert _resolved_files(corpus, spec, ("json", {"train": names}), walked) is None
    assert _resolved_files(corpus, spec, ("text", {"train": names}), None) == names  # no walk: each stated
