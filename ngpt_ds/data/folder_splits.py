"""The splits datasets' load_dataset_builder finds in a local corpus folder, and their files, answered from the
folder's one walk (corpus_folder.refuse_prepared) where that answer is sure, so that datasets' own search is skipped.

datasets tries its split patterns (datasets.data_files.get_data_patterns: 322 of them) each with a walk of the
folder and a stat of every file, then resolves the patterns it chose with as many walks again: about 150 s to open a
folder of 100,000 small files. Its rules, read here from the installed datasets (as of datasets 5.2):
  - each default pattern is a glob under the folder, matched by fsspec (fsspec.utils.glob_translate) against every
    file's path; hidden files and folders, folders named '__*' and FILES_TO_IGNORE are never matched;
  - ALL_DEFAULT_PATTERNS is tried in order (logs, harbor, split-named folders, split-named files, everything): the
    first whose patterns match a file gives the splits, each split the files of its patterns, one pattern after the
    other, each pattern's files sorted (a file two patterns match is listed twice, and read twice);
  - the builder is the most common suffix of each split's files, the same for every split.
This module does not read the folder again, and answers nothing it cannot tell exactly: a dataset card, sharded split
names (data/NAME-00000-of-00001*), files of two formats, or names datasets ignores are left to datasets (None)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ngpt_ds.data.corpus_folder import CorpusFolder

CARDS = ("README.md", ".huggingface.yaml", "dataset_infos.json")
"""What datasets reads of a folder besides its data files (LocalDatasetModuleFactory): a dataset card's configs may
name other files or splits."""

_SHARDED = re.compile(r"^data/[^/]*-[0-9]{5}-of-[0-9]{5}[^/]*$")
"""datasets' SPLIT_PATTERN_SHARDED (data/{split}-00000-of-00001*.*), loosened."""


def walked_splits(
    folder: Path, walked: CorpusFolder, formats: dict[str, str | None]
) -> tuple[str, dict[str, list[str]]] | None:
    """The builder datasets' load_dataset_builder picks for `folder` and the files of each split it finds (the module
    docstring), from `walked` and the files' corpus `formats`; None where that is not sure (ask datasets). The files
    are named as datasets names them: under the folder's real path."""
    try:  # datasets' own rules, some of them private (as of datasets 5.2): where one is gone, ask datasets
        from datasets.data_files import ALL_DEFAULT_PATTERNS, FILES_TO_IGNORE, DataFilesList
        from datasets.load import infer_module_for_data_files_list
        from datasets.packaged_modules import (
            _ALL_METADATA_FILENAMES,
            _MODULE_TO_EXTENSIONS,
            _MODULE_TO_METADATA_EXTENSIONS,
            _MODULE_TO_METADATA_FILE_NAMES,
            _PACKAGED_DATASETS_MODULES,
        )
        from fsspec.utils import glob_translate
    except ImportError:
        return None

    name = str(folder)
    if walked.unlike_datasets or not walked.files or name in _PACKAGED_DATASETS_MODULES:
        return None  # a folder named 'json' is datasets' json builder, not a folder
    kinds = {formats.get(f) for f in walked.files}
    builder = kinds.pop()
    if kinds or builder is None:
        return None  # another file (a script, a .md, ...) or two formats: datasets' choice, its patterns
    base = folder.expanduser().resolve().as_posix()
    if any(c in base for c in "*?[]{}") or any((folder / card).exists() for card in CARDS):
        return None  # datasets' patterns start with the folder's path: a glob character there is read as one
    ignored = set(FILES_TO_IGNORE) | set(_ALL_METADATA_FILENAMES)
    prefix = os.path.join(name, "")
    paths: list[str] = []
    for f in walked.files:
        if not f.startswith(prefix):
            return None
        rel = f[len(prefix) :].replace(os.sep, "/")
        if rel.rsplit("/", 1)[-1] in ignored or _SHARDED.match(rel):
            return None
        paths.append(f"{base}/{rel}")
    splits = _first_patterns_matched(base, sorted(paths), ALL_DEFAULT_PATTERNS, glob_translate)
    if not splits:
        return None
    for files in splits.values():
        # datasets counts the suffixes of every file's name (xbasename: 8 s for 100,000 files); files whose names
        # have one set of suffixes count as one file does, each count times their number, so one tells its choice.
        suffixes = {tuple(f.rsplit("/", 1)[-1].lower().split(".")[1:]) for f in files}
        sample = files if len(suffixes) > 1 else files[:1]
        module, kwargs = infer_module_for_data_files_list(DataFilesList(sample, []))
        if module != builder or kwargs:
            return None  # datasets picks by the most common suffix of all ('a.json.txt' counts .json and .txt)
        kept = DataFilesList(files, []).filter(
            extensions=_MODULE_TO_EXTENSIONS[module] + _MODULE_TO_METADATA_EXTENSIONS[module],
            file_names=_MODULE_TO_METADATA_FILE_NAMES[module],
        )
        if len(kept) != len(files):
            return None
    return builder, splits


def _first_patterns_matched(
    base: str, paths: list[str], defaults: list[dict[str, list[str]]], translate: Callable[[str], str]
) -> dict[str, list[str]]:
    """datasets' _get_data_files_patterns then DataFilesDict.from_patterns over `paths` (sorted, as fsspec's glob
    gives them): the splits of the first of `defaults` that matches a file, each with its patterns' files. A pattern
    ending in '/**' (a split-named folder) matches a file by its folder alone: it is tried on one file of each; one
    '**/NAME' (NAME without '/') by its name alone ('(?:.+/)?NAME' against each whole path: 5.3 s for 100,000 files
    named after a split at a load of 9 on 2 cores, 3.7 s so)."""
    dirs, names = zip(*(p.rsplit("/", 1) for p in paths), strict=True) if paths else ((), ())
    first_of: dict[str, str] = {}
    for d, p in zip(dirs, paths, strict=True):
        first_of.setdefault(d, p)
    for patterns_dict in defaults:
        splits: dict[str, list[str]] = {}
        for split, patterns in patterns_dict.items():
            found: list[str] = []
            for pattern in patterns:
                match = re.compile(translate(f"{base}/{pattern}")).match
                if pattern.endswith("/**"):
                    folders = {d for d, p in first_of.items() if match(p)}
                    if folders:
                        found += [p for p, d in zip(paths, dirs, strict=True) if d in folders]
                elif pattern.startswith("**/") and "/" not in pattern[3:]:  # a file name's pattern, under any folder
                    match = re.compile(translate(pattern[3:])).match
                    # a name it matches holds each literal run of it ('train' of 'train[-._ 0-9]*'): a quicker test
                    # than the match, which is left for the names that pass it
                    part = max(re.split(r"\[[^\]]*\]|[*?]", pattern[3:]), key=len)
                    found += [p for p, n in zip(paths, names, strict=True) if part in n and match(n)]
                else:
                    found += [p for p in paths if match(p)]
            if found:
                splits[str(split)] = found
        if splits:
            return splits
    return {}
