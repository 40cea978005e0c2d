"""Every bad input stops with one NgptConfigError naming the file or field and the fix,
and leaves nothing behind."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from pydoc_data.topics import topics

import pytest

from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset
from ngpt_ds.data.shards import check_vocab_matches, load_dataset_meta
from ngpt_ds.errors import NgptConfigError

_spec = importlib.util.spec_from_file_location(
    "prepare_data_cli", Path(__file__).parents[1] / "launch" / "prepare_data.py"
)
_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cli)
cli_main = _cli.main

DOCS = [topics[k] for k in sorted(topics)[:12]]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def prep(tmp_path: Path, inputs, **kw) -> Path:
    kw.setdefault("vocab_size", 512)
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    kw.setdefault("val_fraction", 0.25)
    return prepare_dataset(PrepareConfig(inputs=tuple(str(i) for i in inputs), out=tmp_path / "out", **kw))


def expect_error(tmp_path: Path, inputs, *needles: str, **kw) -> str:
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(NgptConfigError) as e:
        prep(tmp_path, inputs, **kw)
    msg = str(e.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "something was written"
    return msg


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("good")
    corpus = write_jsonl(root / "c.jsonl", [{"text": d} for d in DOCS])
    return prepare_dataset(
        PrepareConfig(
            inputs=(str(corpus),), out=root / "ds", vocab_size=512, workers=1, progress=False, val_fraction=0.25
        )
    )


def copy_of(good: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good, tmp_path / "ds"))


# ---- corpus input ----------------------------------------------------------------------------


def test_missing_file_and_unmatched_glob(tmp_path):
    expect_error(tmp_path, [tmp_path / "nope.jsonl"], "nope.jsonl", "no such file")
    expect_error(tmp_path, [tmp_path / "*.parquet"], "*.parquet", "no files match")


def test_empty_corpus(tmp_path):
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "blank.jsonl", [{"text": ""}, {"text": None}])
    (tmp_path / "in" / "zero.jsonl").write_text("")
    (tmp_path / "in" / "zero.txt").write_text("")
    for name in ("blank.jsonl", "zero.jsonl", "zero.txt"):
        expect_error(tmp_path, [tmp_path / "in" / name], name, "the corpus is empty", "--text-field")


def test_unknown_text_field_lists_the_fields(tmp_path):
    (tmp_path / "in").mkdir()
    f = write_jsonl(tmp_path / "in" / "c.jsonl", [{"body": d, "id": 1} for d in DOCS])
    expect_error(tmp_path, [f], "no text field 'text'", "its fields are body, id", "pass --text-field")
    expect_error(tmp_path, [f], "'id' holds int values", text_field="id")


def test_unknown_format_and_mixed_formats(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "c.docx").write_text("x")
    (tmp_path / "in" / "a.txt").write_text("x")
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"text": "x"}])
    expect_error(tmp_path, [tmp_path / "in" / "c.docx"], "c.docx", "unknown format")
    expect_error(tmp_path, [tmp_path / "in" / "a.txt", tmp_path / "in" / "b.jsonl"], "mixes file formats")


def test_unknown_split_of_a_saved_dataset(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b"]})}).save_to_disk(str(tmp_path / "sv"))
    expect_error(tmp_path, [tmp_path / "sv"], "has splits train, not 'test'", "--split", split="test")


# ---- tokenizer -------------------------------------------------------------------------------


def test_vocab_too_large_for_the_corpus(tmp_path):
    (tmp_path / "in").mkdir()
    f = write_jsonl(tmp_path / "in" / "c.jsonl", [{"text": d} for d in DOCS[:2]])
    msg = expect_error(
        tmp_path, [f], "--vocab-size 60000 is too large for this corpus", "lower --vocab-size to <=", vocab_size=60000
    )
    limit = int(msg.split("<= ")[1].split(",")[0])
    assert 300 < limit < 60000


def test_vocab_too_small_for_byte_fallback(tmp_path):
    (tmp_path / "in").mkdir()
    f = write_jsonl(tmp_path / "in" / "c.jsonl", [{"text": d} for d in DOCS[:2]])
    expect_error(tmp_path, [f], "--vocab-size 256 is too small", "raise --vocab-size to >=", vocab_size=256)


def test_vocab_too_large_for_the_dtype(tmp_path, good):
    (tmp_path / "in").mkdir()
    f = write_jsonl(tmp_path / "in" / "c.jsonl", [{"text": "x"}])
    expect_error(
        tmp_path, [f], "--vocab-size = 70000", "too large for --dtype uint16", vocab_size=70000, dtype="uint16"
    )


def test_tokenizer_vocab_differs_from_vocab_size_option(tmp_path, good):
    (tmp_path / "in").mkdir()
    f = write_jsonl(tmp_path / "in" / "c.jsonl", [{"text": d} for d in DOCS])
    expect_error(
        tmp_path,
        [f],
        "has vocab 512 but --vocab-size is 1024",
        "drop --vocab-size",
        tokenizer=good / "tokenizer.model",
        vocab_size=1024,
    )
    expect_error(tmp_path, [f], "--tokenizer", "file not found", tokenizer=tmp_path / "none.model")
    (tmp_path / "junk.model").write_bytes(b"junk")
    expect_error(
        tmp_path, [f], "junk.model is not a sentencepiece model", tokenizer=tmp_path / "junk.model", vocab_size=None
    )


def test_tokenizer_vocab_differs_from_model_config(good):
    meta = load_dataset_meta(good)
    check_vocab_matches(meta, 512, good)
    with pytest.raises(NgptConfigError) as e:
        check_vocab_matches(meta, 8192, good)
    assert str(e.value) == (
        f"model config vocab_size = 8192 but dataset {good} was tokenized with tokenizer.model (vocab 512); "
        "set vocab_size: 512 in the model config, or re-prepare the data with --vocab-size 8192"
    )


# ---- options and output ----------------------------------------------------------------------


def test_bad_options_are_listed_together(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    msg = expect_error(
        tmp_path,
        ["whatever.jsonl"],
        "3 problems",
        "--val-fraction = 0.9",
        "--shard-tokens = 0",
        "--out",
        "exists and is not empty; pass --overwrite",
        val_fraction=0.9,
        shard_tokens=0,
    )
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine" and "whatever" not in msg


def test_too_few_documents_for_the_validation_fraction(tmp_path):
    (tmp_path / "in").mkdir()
    f = write_jsonl(tmp_path / "in" / "c.jsonl", [{"text": d} for d in DOCS[:3]])
    expect_error(
        tmp_path, [f], "only 3 documents", "--val-fraction 0.25 (that needs >= 4 documents)", "--val-fraction 0"
    )


# ---- prepared dataset on disk ----------------------------------------------------------------


def test_missing_dir_and_missing_meta(tmp_path):
    with pytest.raises(NgptConfigError, match="does not exist; prepare it with"):
        load_dataset_meta(tmp_path / "none")
    with pytest.raises(NgptConfigError) as missing:
        load_dataset_meta(tmp_path)
    assert str(missing.value) == (
        f"{tmp_path / 'meta.json'} not found: {tmp_path} is not a prepared dataset; prepare it with "
        "`python launch/prepare_data.py --input CORPUS --out DIR`"
    )


def test_a_folder_of_parts_or_of_datasets_given_as_a_dataset_is_named_not_to_be_deleted(good, tmp_path):
    """Fault: any folder without meta.json was "not a prepared dataset (or its preparation was interrupted; delete it
    and prepare again)": a folder of parts waiting for --merge (days of tokenizing) or the folder above datasets and
    runs. Publishing is atomic, so no interrupted preparation leaves such a folder."""
    parts = tmp_path / "parts"
    for index in range(2):
        (parts / f"part-{index:05d}-of-00002").mkdir(parents=True)
        (parts / f"part-{index:05d}-of-00002" / "part.json").write_text("{}")
    with pytest.raises(NgptConfigError) as refused:
        load_dataset_meta(parts)
    assert str(refused.value) == (
        f"{parts / 'meta.json'} not found: {parts} is not a prepared dataset; it holds 2 part(s) prepared with "
        f"--num-shards: merge them into one dataset first (python launch/prepare_data.py --merge --num-shards 2 "
        f"--out {parts})"
    )
    above = tmp_path / "above"
    above.mkdir()
    shutil.copytree(good, above / "data")
    (above / "runs").mkdir()
    with pytest.raises(NgptConfigError) as refused:
        load_dataset_meta(above)
    assert str(refused.value) == (
        f"{above / 'meta.json'} not found: {above} is not a prepared dataset; the prepared dataset(s) in it: "
        f"{above / 'data'}; pass one of those"
    )


def test_unknown_format_version(good, tmp_path):
    d = copy_of(good, tmp_path)
    raw = json.loads((d / "meta.json").read_text())
    raw["format_version"] = 99
    (d / "meta.json").write_text(json.dumps(raw))
    with pytest.raises(NgptConfigError) as e:
        load_dataset_meta(d)
    assert "format_version = 99 is not supported" in str(e.value) and "re-prepare" in str(e.value)


def test_shard_size_disagrees_with_metadata(good, tmp_path):
    d = copy_of(good, tmp_path)
    with open(d / "train_000000.bin", "ab") as f:
        f.write(b"\x00\x00")
    with pytest.raises(NgptConfigError) as e:
        load_dataset_meta(d)
    n = load_dataset_meta(good).splits["train"].tokens
    assert f"shard train_000000.bin = '{n + 1} tokens': meta.json says {n} tokens" in str(e.value)


def test_shard_not_a_multiple_of_the_dtype_size_and_missing_shard(good, tmp_path):
    d = copy_of(good, tmp_path)
    with open(d / "train_000000.bin", "ab") as f:
        f.write(b"\x00")
    (d / "validation_000000.bin").unlink()
    with pytest.raises(NgptConfigError) as e:
        load_dataset_meta(d)
    msg = str(e.value)
    assert "2 problems" in msg
    assert "not a multiple of 2 (uint16)" in msg and "shard validation_000000.bin = 'missing'" in msg


def test_tokenizer_replaced_after_preparation(good, tmp_path):
    d = copy_of(good, tmp_path)
    (d / "tokenizer.model").write_bytes((d / "tokenizer.model").read_bytes() + b"\x00")
    with pytest.raises(NgptConfigError, match="sha256 differs from meta.json"):
        load_dataset_meta(d)


def test_loader_shards_are_open_read_only(good):
    import fcntl
    import os

    from ngpt_ds.data.loader import TokenWindowLoader

    ld = TokenWindowLoader(good, "train", 16, 2, 0, 1, seed=0)
    ld.next_batch()
    fds = [fd for fd in ld._index._fds if fd is not None]
    assert fds and all(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY for fd in fds)


# ---- command line ----------------------------------------------------------------------------


def test_cli_prints_one_line_error_and_exits_2(tmp_path, capsys):
    assert cli_main(["--input", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --input ") and "no such file" in err and "Traceback" not in err
    assert cli_main(["--input", str(tmp_path / "x.jsonl")]) == 2
    assert "--out DIR is required" in capsys.readouterr().err
    assert cli_main(["--text-field", "body"]) == 2
    assert "--text-field: only used with --input" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
