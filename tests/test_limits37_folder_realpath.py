"""Fault: corpus_folder.warn_files_not_read took the real path (os.path.realpath: an lstat of each folder of the path,
a network round trip each on NFS/Lustre) of every file in no split: a folder of train.txt beside 100,000 other files
paid 100,000 realpath calls to say that datasets reads train.txt alone. Such a file is now looked up by datasets'
name, and its real path is taken only where it is a link (one lstat tells); a file in no split that a datasets' file
links to is still counted as read."""

from __future__ import annotations

import os
from pathlib import Path

from ngpt_ds.data import corpus_folder
from ngpt_ds.data.folder_splits import walked_splits
from ngpt_ds.data.sources import file_format

from conftest import logged_warnings


def _warning(folder: Path, monkeypatch) -> tuple[list[str], int]:
    """warn_files_not_read as ngpt-prepare calls it (sources.py): its warnings and the realpath calls it made."""
    walked = corpus_folder.refuse_prepared(folder)
    formats = {f: file_format(f) for f in walked.files}
    found = walked_splits(folder, walked, formats)
    assert found is not None
    calls = []
    realpath = os.path.realpath

    def counted(path, *args, **kwargs):
        calls.append(path)
        return realpath(path, *args, **kwargs)

    monkeypatch.setattr(os.path, "realpath", counted)
    with logged_warnings("ngpt_ds.data.corpus_folder") as lines:
        corpus_folder.warn_files_not_read(
            str(folder), "train", found[0], found[1], [(f, fmt) for f, fmt in formats.items() if fmt]
        )
    monkeypatch.undo()
    return lines, len(calls)


def test_files_in_no_split_are_not_each_given_a_realpath(tmp_path, monkeypatch):
    """train.txt beside 300 files in no split (3 subfolders): one realpath call (the folder's), not 301. Before:
    'assert 302 == 1'."""
    folder = tmp_path / "corpus"
    for sub in range(3):
        (folder / f"part{sub}").mkdir(parents=True)
        for i in range(100):
            (folder / f"part{sub}" / f"doc{i:03d}.txt").write_text("a line\n", encoding="utf-8")
    (folder / "train.txt").write_text("the train split\n", encoding="utf-8")
    lines, calls = _warning(folder, monkeypatch)
    assert calls == 1
    assert len(lines) == 1
    assert (
        f"datasets reads 1 text file of it for split 'train' and not 300 others: {folder}/part0/doc000.txt (in no"
        in (lines[0])
    )


def test_links_are_still_read_by_their_real_path(tmp_path, monkeypatch):
    """alias.txt, a link to train.txt, is read (its text is train.txt's); body.txt, which train.txt links to, is read
    through it; other.txt is in no split. Three real paths taken: the folder's, alias.txt's and train.txt's."""
    folder = tmp_path / "corpus"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "body.txt").write_text("the train split\n", encoding="utf-8")
    (folder / "data" / "other.txt").write_text("left out\n", encoding="utf-8")
    (folder / "train.txt").symlink_to(Path("data") / "body.txt")
    (folder / "alias.txt").symlink_to("train.txt")
    lines, calls = _warning(folder, monkeypatch)
    assert lines == [
        f"--input {folder}: datasets reads 1 text file of it for split 'train' and not 1 other: "
        f"{folder}/data/other.txt (in no split). Files and folders named after a split (train, test, validation, ...) "
        "make datasets read those alone; to read the others, pass them by a glob (a glob reads every file it "
        "matches), or --split NAME"
    ]
    assert calls == 4  # the folder, train.txt (a link) for each lookup, alias.txt
