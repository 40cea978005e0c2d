"""A corpus folder given as --input, checked before datasets reads it (ngpt_ds.data.sources): walked once, no
dataset prepared by ngpt_ds given as, or inside, the corpus, and the files datasets leaves out of it (another split,
another format, not a file) named once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ngpt_ds import log
from ngpt_ds.data.folder_splits import walked_splits
from ngpt_ds.data.local_inputs import DECOMPRESSORS, NAMED_AT_MOST, shown, warn_not_files
from ngpt_ds.data.shards import FORMAT_NAME, META_FILE
from ngpt_ds.errors import NgptConfigError

_log = log.get(__name__)


def warn_files_not_read(
    folder: str, split: str, builder: str, splits: dict[str, list[str]], corpus_files: list[tuple[str, str]]
) -> None:
    """Say once which corpus files of a folder datasets does not read for --split, and why. datasets reads a folder
    whole only where no file or subfolder is named after a split: `train.jsonl` and `test.jsonl` beside
    `more.jsonl` read `train.jsonl` alone (`more.jsonl` is in no split), and of files in two formats only those of
    the most common one; the rest was left out without a word. `splits`: the files datasets reads for each split;
    `corpus_files`: the folder's files of a corpus format (datasets' skip rules, CorpusFolder.files), with that format."""
    read = set(splits.get(split, ()))
    if not read:  # an unknown split: datasets' read names it
        return
    # datasets names the files under the folder's real path; a file of another split is found by that name (no
    # call: the real paths of 10,000 validation/ files beside train/ and of datasets' 90,000 took 5-14 s); only a
    # file whose name differs (a link) is compared by its real path, and the real paths of datasets' files are
    # taken only then (one call each: 15 us). A file of the folder's walk (CorpusFolder.files: links to folders
    # not followed) whose name is not datasets' has that name as its real path unless it is itself a link: one
    # lstat tells, where its real path was taken (train.txt beside 100,000 files of no split: 100,000 realpath
    # calls, one lstat per folder of its path each); it is then read only through a datasets' file that is a link,
    # or that datasets found through a link to a folder, whose real paths alone are taken.
    base = os.path.realpath(folder)
    named = {f: name for name, files in splits.items() for f in files}
    real_split: dict[str, str] = {}
    linked: dict[str, str] | None = None  # the real paths of datasets' files that are links, or not walked by name
    left: list[str] = []
    formats: set[str] = set()  # of the files left out as another format
    for file, fmt in corpus_files:
        key = os.path.join(base, file[len(folder) :].lstrip(os.sep)) if file.startswith(folder) else None
        if key in read:
            continue
        in_split = named.get(key) if key else None
        if in_split is None and (key is None or os.path.islink(file)):
            if not real_split:
                real_split = {os.path.realpath(f): name for name, files in splits.items() for f in files}
            in_split = real_split.get(os.path.realpath(file))
        elif in_split is None and key is not None:  # its real path is its name: only a link of datasets' reads it
            if linked is None:
                walked = {os.path.join(base, f[len(folder) :].lstrip(os.sep)) for f, _ in corpus_files}
                linked = {
                    os.path.realpath(f): name
                    for name, files in splits.items()
                    for f in files
                    if f not in walked or os.path.islink(f)  # a link, or found through a link to a folder
                }
            in_split = linked.get(key)
        if in_split == split:
            continue
        if fmt != builder:
            formats.add(fmt)
        why = f"not {builder}" if fmt != builder else f"split {in_split!r}" if in_split else "in no split"
        left.append(f"{shown(file)} ({why})")
    if not left:
        return
    more = f" and {len(left) - NAMED_AT_MOST} more" if len(left) > NAMED_AT_MOST else ""
    fixes = []
    if len(formats) < len(left):  # some left out by a split name
        fixes.append(
            "Files and folders named after a split (train, test, validation, ...) make datasets read those alone; "
            "to read the others, pass them by a glob (a glob reads every file it matches), or --split NAME"
        )
    if formats:
        fixes.append(
            f"A folder is read in one format, its most common: convert the {'/'.join(sorted(formats))} files to "
            f"{builder}, or prepare them on their own"
        )
    _log.warning(
        f"--input {shown(folder)}: datasets reads {len(read)} {builder} file{'s' if len(read) > 1 else ''} of it for "
        f"split {split!r} and not {len(left)} other{'s' if len(left) > 1 else ''}: {', '.join(left[:NAMED_AT_MOST])}"
        f"{more}. {'. '.join(fixes)}"
    )


@dataclass(frozen=True)
class CorpusFolder:
    """What the one walk of a corpus folder found (refuse_prepared): a folder of many files on a network filesystem
    was walked three times, each file looked at with a stat each time, before datasets walked it itself."""

    files: list[str]
    """The files datasets reads of it: subfolders included, names starting with '.' and folders starting with '__'
    left out as datasets leaves them out, links to folders not followed."""
    compressed: list[str]
    """Its compressed files, one of each compression (for check_decompressors)."""
    unlike_datasets: bool = False
    """Whether datasets' own walk may find files this one left out: a link to a folder (fsspec's walk follows it,
    os.walk does not)."""


def _is_prepared(folder: Path) -> bool:
    """A dataset written by ngpt_ds: its meta.json opens with the format name (shards.write_meta)."""
    try:
        with open(folder / META_FILE, "rb") as f:
            return f'"{FORMAT_NAME}"'.encode() in f.read(4096)
    except OSError:
        return False


def refuse_prepared(folder: Path) -> CorpusFolder:
    """A prepared dataset given as the corpus, or inside the corpus folder, which datasets reads whole: either was
    "No (supported) data files found" (its train_000000.bin made datasets look for splits), a hub hint after it.
    Returns what its walk found (CorpusFolder); what the folder holds that datasets leaves out as not a file is named
    once (warn_not_files)."""
    if _is_prepared(folder):
        raise NgptConfigError(
            f"--input {shown(str(folder))} is a dataset prepared by ngpt_ds (token shards and meta.json), not a corpus; pass the "
            "corpus it was prepared from (its meta.json names it under 'source')"
        )
    compressed: dict[str, str] = {}
    found: list[str] = []
    not_files: list[str] = []
    unlike = False
    for top, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))  # datasets skips these too
        unlike = unlike or any(os.path.islink(os.path.join(top, d)) for d in dirs)
        # os.walk lists whatever is not a folder among `files`: pipes, sockets, devices, links to nothing.
        for name in sorted(files):  # a file named '__x' is read: datasets leaves out only folders so named
            if not name.startswith("."):
                path = os.path.join(top, name)
                (found if os.path.isfile(path) else not_files).append(path)
        if META_FILE in files and top != str(folder) and _is_prepared(Path(top)):
            raise NgptConfigError(
                f"--input {shown(str(folder))} holds {shown(top)}, a dataset prepared by ngpt_ds, and a folder is read whole; pass the "
                f"corpus files by a glob (e.g. {shown(str(folder))}/*.jsonl), or move the dataset out of the folder"
            )
        for name in sorted(files):
            suffix = os.path.splitext(name.lower())[1]
            if suffix in DECOMPRESSORS and not name.startswith("."):
                compressed.setdefault(suffix, os.path.join(top, name))
    warn_not_files(f"--input {shown(str(folder))} holds", not_files)
    return CorpusFolder(files=found, compressed=sorted(compressed.values()), unlike_datasets=unlike)


def train_files(folder: Path, walked: CorpusFolder, formats: dict[str, str | None]) -> tuple[str, list[str]] | None:
    """The builder datasets' load_dataset_builder picks for `folder` and its files where it reads every file of the
    walk in one split, 'train' (folder_splits.walked_splits, which answers for split-named folders too). None
    otherwise."""
    found = walked_splits(folder, walked, formats)
    if found is None or list(found[1]) != ["train"] or len(found[1]["train"]) != len(walked.files):
        return None
    return found[0], found[1]["train"]
