"""csv files of no bytes among the corpus files of a glob: no rows, as an empty json file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from ngpt_ds.cli.prepare import main

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()


def _doc(i: int) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(20 + i % 5))


def test_a_csv_file_of_no_bytes_in_a_glob_holds_no_documents(tmp_path, capsys):
    """Fault: a csv file of no bytes (a failed export, a placeholder) matched by the glob stopped the preparation
    where the stream reached it, 'could not read .../b.csv (EmptyDataError: No columns to parse from file)':
    after the tokenizer was trained, or hours into the tokenizing when the sound files before it were large,
    where an empty .jsonl in the same glob is read as no documents. Before: exit 2 with that error. Now: the
    file is read as no rows (compressed too), a warning names it, and every document of the other files is
    prepared."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.csv").write_text("text\n" + "".join(_doc(i) + "\n" for i in range(300)), encoding="utf-8")
    (corpus / "b.csv").write_bytes(b"")
    (corpus / "c.csv").write_text("text\nlast document\n", encoding="utf-8")
    with gzip.open(corpus / "d.csv.gz", "wb"):
        pass  # no bytes once decompressed
    out = tmp_path / "ds"
    inputs = [str(corpus / "*.csv"), str(corpus / "*.csv.gz")]
    argv = ["--input", *inputs, "--out", str(out), "--vocab-size", "300", "--val-fraction", "0.01", "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"--input: 1 csv file(s) of no bytes hold no documents, e.g. {corpus / 'b.csv'}; skipped\n" in err
    meta = json.loads((out / "meta.json").read_text())
    counts = {name: split["documents"] for name, split in meta["splits"].items()}
    assert counts == {"train": 298, "validation": 3}
    assert meta["source"] == f"csv files {', '.join(inputs)} (3 files), text field 'text'"


def test_csv_files_that_are_all_empty_are_an_empty_corpus(tmp_path, capsys):
    """Fault: csv files that are all empty stopped with 'could not read .../a.csv (EmptyDataError: No columns to
    parse from file); fix or remove that file'. Now: the corpus is empty, as for empty json files."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("a.csv", "b.csv"):
        (corpus / name).write_bytes(b"")
    assert main(["--input", str(corpus / "*.csv"), "--out", str(tmp_path / "ds"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: csv files {corpus / '*.csv'} (2 files), text field 'text': the corpus is empty (no non-empty "
        "'text' values); check --input and --text-field"
    )
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["corpus"]
