"""Read a corpus as a stream of document strings through HF `datasets`.

An input is one of:
  - local files or globs: .txt/.text (text), .json/.jsonl/.ndjson (json), .parquet, .csv,
    optionally compressed (.gz, .bz2, .xz, .zst, .lz4); several may be given if all share a format;
  - a directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`;
  - any other directory, or a hub dataset name ("Skylion007/openwebtext") with an optional
    config and split, loaded with `datasets.load_dataset(..., streaming=True)`.
Everything streams: documents are read in batches, never the whole corpus at once.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ngpt_ds import log
from ngpt_ds.data.corpus_folder import CorpusFolder, refuse_prepared, warn_files_not_read
from ngpt_ds.data.folder_splits import walked_splits
from ngpt_ds.data.local_inputs import DECOMPRESSORS as _DECOMPRESSORS  # noqa: F401  (sources._DECOMPRESSORS, as before)
from ngpt_ds.data.local_inputs import (
    UNREADABLE,
    check_decompressors,
    check_line_lengths,
    check_text_documents,
    resolve_files,
    shown,
)
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.limits import limit_in_force

_log = log.get(__name__)

_FORMATS = {
    ".txt": "text",
    ".text": "text",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".lz4")
TEXT_SAMPLE_BY = ("paragraph", "line", "document")
_READ_BATCH = 256
_GROUP_FILES = 256
"""Local files read by one datasets stream (Corpus)."""
_READ_ERRORS = (ConnectionError, FileNotFoundError, *UNREADABLE)
"""What datasets raises for a corpus it cannot read: a message, not a traceback."""
_BOM = "\ufeff"


_TEXT_UNIT = {"paragraph": "paragraph", "line": "line", "document": "file"}
"""What one document of a text file is, by --text-sample-by, in the corpus's description ('document' read 'one
document per document')."""


def file_format(path: str) -> str | None:
    """Builder name for a file name by its extension, compression suffix ignored."""
    name = path.lower()
    for c in _COMPRESSION:
        if name.endswith(c):
            name = name[: -len(c)]
    return _FORMATS.get(os.path.splitext(name)[1])


def _looks_like_path(spec: str) -> bool:
    return (
        any(c in spec for c in "*?[")
        or os.path.exists(spec)
        or file_format(spec) is not None
        or spec.startswith((".", "/", "~"))
    )


def _is_saved_dataset(path: Path) -> bool:
    """A folder of datasets' save_to_disk, by its markers (datasets' load_dataset refuses a folder holding a
    `state.json` too: "saved using save_to_disk")."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


@dataclass(frozen=True, kw_only=True, slots=True)
class CorpusSpec:
    """What to read. Validated and resolved by `open_corpus`."""

    inputs: tuple[str, ...]
    """File paths/globs, one saved-dataset dir, one dataset dir, or one hub dataset name."""
    text_field: str = "text"
    """Column holding the document text (text files always have 'text')."""
    hub_config: str | None = None
    """Config name for hub datasets (load_dataset's `name`)."""
    split: str = "train"
    """Split to read from a saved DatasetDict or a hub dataset."""
    text_sample_by: str = "paragraph"
    """Text files: one document per 'paragraph' (ended by an empty line), 'line', or whole 'document' (file)."""


class Corpus:
    """A resolved, readable corpus. `texts()` starts a fresh stream each call.

    Local files (kind "files") are read in groups of _GROUP_FILES, one datasets stream each (a stream of its own
    costs each file about 0.1 s: days for a corpus of a million small files). A stream takes the columns of its
    first file for all, so files whose other fields differ (a `url` in some, an `id` a number in one and a
    string in another) stopped the reading with "Couldn't cast" where the second kind began, though only the
    text field is read; and an error could not say which file it came from. A group whose stream fails is read
    again one file at a time, past the documents already given: those files are read, and an error names its
    file."""

    def __init__(
        self,
        spec: CorpusSpec,
        kind: str,
        load_args: dict[str, Any],
        description: str,
        *,
        files: Sequence[str] = (),
        text_builder: bool = False,
    ):
        self.spec = spec
        self.kind = kind
        self._load_args = load_args
        self.description = description
        self._files = tuple(files)
        self._text_builder = text_builder  # datasets' text builder: its files' byte order marks are dropped
        self._reading: str | None = None  # the local file being read, named by errors
        self._rows_read = self._null_rows = 0  # rows of this pass, and those without a text value
        self._told_null = False  # the count is the same at every whole pass (tokenizer training, tokenizing)

    def _dataset(self, data_files: list[str] | None = None) -> Any:
        import datasets

        if self.kind == "saved":
            ds = datasets.load_from_disk(self._load_args["path"])
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[self.spec.split]
            return ds
        # Local files land in one split named "train" whatever --split says.
        split = "train" if self.kind == "files" else self.spec.split
        args = self._load_args if data_files is None else self._load_args | {"data_files": data_files}
        return datasets.load_dataset(**args, split=split, streaming=True)

    def texts(self) -> Iterator[str]:
        """Non-empty document strings, in corpus order."""
        self._reading = None
        self._rows_read = self._null_rows = 0
        try:
            yield from self._texts()
        except NgptConfigError:
            raise
        except MemoryError:  # datasets reads a line (text: up to a blank line, or a whole file) into memory at once
            what = "it" if self._reading is None else shown(self._reading)
            raise NgptConfigError(
                f"{self.description}: ran out of memory reading {what}: it holds a document (a line, a paragraph "
                "without a blank line, or with --text-sample-by document a whole file) too large to read whole in "
                f"this process's memory; split it into smaller documents, or leave that file out{limit_in_force()}"
            ) from None
        except _READ_ERRORS as e:
            first_line = (str(e).splitlines() or [type(e).__name__])[0]
            what = "it" if self._reading is None else shown(self._reading)
            raise NgptConfigError(
                f"{self.description}: could not read {what} ({type(e).__name__}: {first_line}); {self._read_hint()}"
            ) from None
        # Said once a whole pass is read (not after the tokenizer's sample of it): rows whose text is under another
        # field, or null, were left out without a word, a third of a corpus as easily as none.
        if self._null_rows and not self._told_null:
            self._told_null = True
            field = self.spec.text_field
            _log.warning(
                f"{self.description}: {self._null_rows:,} of {self._rows_read:,} rows have no {field!r} value (null, "
                "or the field missing from the row) and were left out; if their text is under another field, pass "
                "--text-field or fix those rows"
            )

    def _read_hint(self) -> str:
        if self.kind == "files":
            return "fix or remove that file, or check that its extension matches its contents"
        if self.kind == "hub":
            return (
                "check the name, --config and --split; for a hub name, check that this machine can reach "
                "the hub (or pass local files)"
            )
        return "check the saved dataset directory and --split"

    def _texts(self) -> Iterator[str]:
        if self.kind != "files":
            yield from self._rows(None)
            return
        for start in range(0, len(self._files), _GROUP_FILES):
            yield from self._group(self._files[start : start + _GROUP_FILES])

    def _group(self, files: Sequence[str]) -> Iterator[str]:
        """The documents of `files`: one stream, or file by file where that stream fails (the class docstring)."""
        given, counts = 0, (self._rows_read, self._null_rows)
        if len(files) > 1:
            self._reading = None
            try:
                for text in self._rows(files):
                    yield text
                    given += 1
                return
            except (NgptConfigError, *_READ_ERRORS):
                # Read again below, one file at a time, past the `given` documents; its rows are counted there.
                self._rows_read, self._null_rows = counts
        for file in files:
            self._reading = file
            for text in self._rows([file]):
                if given:
                    given -= 1
                    continue
                yield text
        self._reading = None

    def _rows(self, files: Sequence[str] | None) -> Iterator[str]:
        """The documents of the corpus, or of the local `files` alone."""
        # datasets reads each data_files entry as a pattern: `a[b].jsonl` would read `ab.jsonl` instead.
        data_files = None if files is None else [glob.escape(f) for f in files]
        field = self.spec.text_field
        # The text builder keeps a file's UTF-8 byte order mark (Windows editors write one) as the first
        # character of its first document, where the tokenizer learned it as text; json/csv drop it.
        strip_bom = self._text_builder
        for batch in self._batches(data_files, files):
            if field not in batch:
                raise self._unknown_field(sorted(batch))
            self._rows_read += len(batch[field])
            for text in batch[field]:
                if text is None:
                    self._null_rows += 1
                    continue
                if strip_bom and isinstance(text, str) and text.startswith(_BOM):
                    text = text[1:]
                if text == "":
                    continue
                if not isinstance(text, str):
                    raise NgptConfigError(
                        f"{self.description}: text field {field!r} holds {type(text).__name__} values, not "
                        "strings; pass --text-field naming a string column"
                    )
                yield text

    def _batches(self, data_files: list[str] | None, files: Sequence[str] | None) -> Iterator[Any]:
        """datasets' batches of the corpus (or of `data_files`), ended, not failed, by what it raises for a file
        without rows while loading or iterating: a bare StopIteration, which it lets escape for empty json files (it
        means "no rows", and must not reach a generator frame: PEP 479), or an empty csv file's error (_empty_file).
        A generator of its own: nothing the caller raises while it reads a batch is caught here."""
        try:
            batches = iter(self._dataset(data_files).iter(batch_size=_READ_BATCH))
            while True:
                yield next(batches)
        except StopIteration:
            return
        except ValueError as e:
            if self._empty_file(files, e):
                return
            raise

    @staticmethod
    def _empty_file(files: Sequence[str] | None, err: ValueError) -> bool:
        """Whether `err` is pandas' "No columns to parse from file" for one csv file that holds nothing (compressed:
        the uncompressed files of no bytes are left out before any read, _open_files). Such a file has no rows, as an
        empty json file has none; it stopped the reading with "could not read" where the stream reached it, after
        the tokenizer was trained or when hours of tokenizing were done."""
        return files is not None and len(files) == 1 and type(err).__name__ == "EmptyDataError"

    def _unknown_field(self, fields: list[str]) -> NgptConfigError:
        where, fix = ("", "") if self._reading is None else (f" in {shown(self._reading)}", ", or leave that file out")
        return NgptConfigError(
            f"{self.description}: no text field {self.spec.text_field!r}{where}; its fields are "
            f"{', '.join(fields) or '(none)'}; pass --text-field with one of them{fix}"
        )

    def check_readable(self) -> None:
        """Fail now, before any compute, if the text field is absent or the corpus is empty."""
        if self.kind == "saved":
            ds = self._dataset()
            if self.spec.text_field not in ds.column_names:
                raise self._unknown_field(sorted(ds.column_names))
        if next(self.texts(), None) is None:
            raise NgptConfigError(
                f"{self.description}: the corpus is empty (no non-empty {self.spec.text_field!r} values); "
                "check --input and --text-field"
            )


def open_corpus(spec: CorpusSpec) -> Corpus:
    """Resolve `spec` to a Corpus. Raises NgptConfigError for missing files, mixed formats,
    unknown splits, or an unreachable hub dataset."""
    if not spec.inputs:
        raise NgptConfigError("no --input given; pass files, a glob, a saved dataset dir or a hub dataset name")
    blank = next((s for s in spec.inputs if not s.strip()), None)
    if blank is not None:  # datasets looked it up on the hub: an IndexError traceback for ''
        raise NgptConfigError(
            f"--input {blank!r}: an empty name (an unset shell variable?); pass files, a glob, a folder or a hub "
            "dataset name"
        )
    if spec.text_sample_by not in TEXT_SAMPLE_BY:
        raise NgptConfigError(f"--text-sample-by {spec.text_sample_by!r}: use one of {', '.join(TEXT_SAMPLE_BY)}")
    first = os.path.expanduser(spec.inputs[0])
    if len(spec.inputs) == 1 and os.path.isdir(first):
        return _open_dir(spec, Path(first))
    if all(_looks_like_path(s) for s in spec.inputs):
        return _open_files(spec)
    if len(spec.inputs) > 1:
        raise NgptConfigError(
            f"--input {' '.join(spec.inputs)}: a hub dataset name must be the only --input; "
            "several inputs must all be local files or globs"
        )
    return _open_hub(spec, spec.inputs[0])


def _open_files(spec: CorpusSpec) -> Corpus:
    files = resolve_files(spec.inputs)
    if spec.split != "train":  # load_dataset puts local files in one split, "train": --split was ignored
        raise NgptConfigError(
            f"--split {spec.split!r}: local files have no splits, each is read whole; pass the files of that "
            "split as --input and drop --split"
        )
    formats = {f: file_format(f) for f in files}
    unknown = [f for f, fmt in formats.items() if fmt is None]
    if unknown:
        raise NgptConfigError(
            f"--input file {unknown[0]!r}: unknown format; use files ending in "
            f"{', '.join(sorted(_FORMATS))} (optionally compressed with {', '.join(_COMPRESSION)})"
        )
    check_decompressors(files)
    kinds = sorted({fmt for fmt in formats.values() if fmt is not None})  # all known: checked above
    if len(kinds) > 1:
        raise NgptConfigError(f"--input mixes file formats ({', '.join(kinds)}); prepare one format at a time")
    builder = kinds[0]
    if builder == "json":
        check_line_lengths(files)
    if builder == "text":
        check_text_documents(files, spec.text_sample_by)
    if builder == "csv":  # no bytes, no rows (as for json); kept, pandas stops with "No columns to parse from file"
        empty = [f for f in files if os.path.getsize(f) == 0]
        if empty and len(empty) < len(files):  # all empty: read, and refused below as an empty corpus
            _log.warning(
                f"--input: {len(empty)} csv file(s) of no bytes hold no documents, e.g. {shown(empty[0])}; skipped"
            )
            files = [f for f in files if os.path.getsize(f) > 0]
    load_args: dict[str, Any] = {"path": builder}  # data_files: given per group of files (Corpus._group)
    if builder == "text":
        load_args["sample_by"] = spec.text_sample_by
    description = (
        f"{builder} files {', '.join(map(shown, spec.inputs))} ({len(files)} file{'s' if len(files) > 1 else ''})"
    )
    if builder == "text":
        description += f", one document per {_TEXT_UNIT[spec.text_sample_by]}"
    else:
        description += f", text field {spec.text_field!r}"
    corpus = Corpus(spec, "files", load_args, description, files=files, text_builder=builder == "text")
    corpus.check_readable()
    return corpus


def _open_dir(spec: CorpusSpec, path: Path) -> Corpus:
    folder = refuse_prepared(path)  # the one walk of the folder: its files are passed along
    if _is_saved_dataset(path):
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except (OSError, ValueError, KeyError, TypeError) as e:  # a damaged folder: no traceback
            first_line = (str(e).splitlines() or [type(e).__name__])[0]
            raise NgptConfigError(
                f"--input {path} looks like a folder written by datasets' save_to_disk but could not be loaded "
                f"({type(e).__name__}: {first_line}); repair or re-save it, or pass its files (e.g. {path}/*.jsonl)"
            ) from None
        if isinstance(ds, datasets.DatasetDict) and spec.split not in ds:
            raise NgptConfigError(
                f"--input {path}: saved dataset has splits {', '.join(ds)}, not {spec.split!r}; pass --split"
            )
        # A saved Dataset (not a DatasetDict) is one split, read whole whatever --split said.
        own = None if isinstance(ds, datasets.DatasetDict) or ds.split is None else str(ds.split)
        if not isinstance(ds, datasets.DatasetDict) and spec.split not in ("train", own):
            raise NgptConfigError(
                f"--split {spec.split!r}: --input {path} is a saved Dataset"
                + (f" of split {own!r}" if own else "")
                + ", not a DatasetDict of splits; it is read whole: drop --split"
            )
        corpus = Corpus(
            spec,
            "saved",
            {"path": str(path)},
            f"saved dataset {shown(spec.inputs[0])} split {spec.split!r}, text field {spec.text_field!r}",
        )
        corpus.check_readable()
        return corpus
    # A folder of .jsonl.zst files without zstandard was "could not read it (ValueError: Compression type zstd not
    # supported); check the name, --config and --split; for a hub name, check that this machine can reach the hub".
    check_decompressors(folder.compressed)
    return _open_hub(spec, str(path), folder=folder)


def _builder_of(
    folder: Path, spec: CorpusSpec, walked: CorpusFolder | None = None, formats: dict[str, str | None] | None = None
) -> tuple[str, dict[str, list[str]]] | None:
    """The name of the datasets builder that reads a local dataset folder ("text", "json", ...) and the files it
    reads for each split, or None where datasets cannot tell (the read then names the problem). Where the folder's
    walk (`walked`, its files' `formats`) tells datasets' answer, without datasets' walks (folder_splits)."""
    import datasets

    if walked is not None and formats is not None and not spec.hub_config:
        known = walked_splits(folder, walked, formats)
        if known is not None:
            return known

    try:
        builder = datasets.load_dataset_builder(str(folder), name=spec.hub_config)
        splits = {str(split): [str(f) for f in files] for split, files in (builder.config.data_files or {}).items()}
        return str(builder.name), splits
    except Exception:  # any failure of datasets' inspection: the read that follows reports it with its hint
        return None


def _open_hub(spec: CorpusSpec, name: str, folder: CorpusFolder | None = None) -> Corpus:
    """A hub dataset, or a local dataset folder (`folder`: what its walk found)."""
    local = folder is not None
    folder_files = None if folder is None else folder.files
    load_args: dict[str, Any] = {"path": name}
    if spec.hub_config:
        load_args["name"] = spec.hub_config
    what = "dataset dir" if local else "hub dataset"
    config = f" config {spec.hub_config!r}" if spec.hub_config else ""
    description = f"{what} {shown(name)}{config} split {spec.split!r}"
    # A folder of text files: datasets' text builder splits them by line unless told, where the same files by a
    # glob are split as --text-sample-by says (paragraph by default).
    formats = {f: file_format(f) for f in folder_files or ()}
    found = _builder_of(Path(name), spec, folder, formats) if local else None
    builder = None if found is None else found[0]
    text = builder == "text"
    if found is not None:
        corpus_files = [(f, fmt) for f, fmt in formats.items() if fmt is not None]
        warn_files_not_read(name, spec.split, found[0], found[1], corpus_files)
    if builder == "json":  # a folder's json lines are read as a glob's are (check_line_lengths)
        check_line_lengths([f for f, fmt in formats.items() if fmt == "json"])
    if text:  # and its text files' paragraphs or lines (check_text_documents)
        check_text_documents([f for f, fmt in formats.items() if fmt == "text"], spec.text_sample_by)
        load_args["sample_by"] = spec.text_sample_by
        description += f", one document per {_TEXT_UNIT[spec.text_sample_by]}"
    else:
        description += f", text field {spec.text_field!r}"
    files = _resolved_files(Path(name), spec, found, folder)
    if files is not None:  # the files datasets resolved once, read as a glob's (without the folder's path)
        load_args["path"] = builder
        corpus = Corpus(spec, "files", load_args, description, files=files, text_builder=text)
    else:
        corpus = Corpus(spec, "hub", load_args, description, text_builder=text)
    corpus.check_readable()
    return corpus


def _resolved_files(
    folder: Path, spec: CorpusSpec, found: tuple[str, dict[str, list[str]]] | None, walked: CorpusFolder | None = None
) -> list[str] | None:
    """The files of --split that datasets found in a local dataset folder (_builder_of), where reading them as files
    reads what the folder's read does: all of the folder's builder's format, local files, and no dataset card
    (README.md) or --config that may set more than the files. None otherwise. load_dataset of a folder resolves its
    files again at every read (for each split name it knows, a walk of the folder with a stat of every file), at the
    check that it holds a document, the tokenizer's sample and the tokenizing, and in each --num-shards part: a folder
    of 20,000 small files took 25-27 s a pass (9-19 s read as files) and 40-62 s to open (16-33 s).
    A file the folder's walk (`walked`) found a file is not looked at again: a stat each, on a network filesystem
    (NFS, Lustre) a round trip each, for 100,000 files."""
    if found is None or spec.hub_config or (folder / "README.md").exists():
        return None
    builder, splits = found
    files = splits.get(spec.split)
    if not files or any(file_format(f) != builder for f in files):
        return None
    seen = _walked_names(folder, walked)
    if any(f not in seen and not os.path.isfile(f) for f in files):  # a name datasets found that the walk did not
        return None
    return files


def _walked_names(folder: Path, walked: CorpusFolder | None) -> set[str]:
    """The files of the folder's walk (each seen a file by its stat, refuse_prepared) named as datasets names them:
    under the folder's real path, '/' between parts."""
    if walked is None:
        return set()
    prefix, base = os.path.join(str(folder), ""), folder.expanduser().resolve().as_posix()
    return {f"{base}/{f[len(prefix) :].replace(os.sep, '/')}" for f in walked.files if f.startswith(prefix)}
