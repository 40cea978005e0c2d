"""Data preparation across nodes (ngpt_ds/data/parts.py, launch/prepare_data.py --num-shards/--merge).

Parts prepared separately and merged must equal one single-process preparation token for token,
split by split; the merge refuses a missing part and parts from different tokenizers (exit 2).
"""

import json
import sys

import numpy as np
import pytest

from ngpt_ds.data.parts import merge_parts, prepare_part
from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset
from ngpt_ds.data.shards import load_dataset_meta
from ngpt_ds.errors import NgptConfigError

from conftest import REPO, cpu_env, run


def write_corpus(folder, name="corpus.jsonl"):
    """A few hundred documents of varying length: CPython's pydoc topics, one per paragraph."""
    import pydoc_data.topics

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with path.open("w") as f:
        for text in pydoc_data.topics.topics.values():
            for para in text.split("\n\n")[:6]:
                if para.strip():
                    f.write(json.dumps({"text": para}) + "\n")
    return path


def tokens(data_dir):
    """split -> (all tokens in shard order, documents)."""
    meta = load_dataset_meta(data_dir)
    return {
        name: (
            np.concatenate([np.fromfile(meta.shard_path(s), dtype=meta.np_dtype) for s in split.shards]),
            split.documents,
        )
        for name, split in meta.splits.items()
    }


def config(corpus, out, tokenizer, **extra):
    return PrepareConfig(
        inputs=(str(corpus),),
        out=out,
        tokenizer=tokenizer,
        val_fraction=0.1,
        workers=1,
        progress=False,
        shard_tokens=3000,
        **extra,
    )


def single_and_parts(corpus, tmp_path, tokenizer, num_parts, block_docs):
    """`corpus` prepared by one process into tmp_path/single, and in `num_parts` parts of `block_docs`-document
    blocks into tmp_path/parts, not merged yet: the two ways of preparing it that must agree. Both folders."""
    single = prepare_dataset(config(corpus, tmp_path / "single", tokenizer))
    for k in range(num_parts):
        prepare_part(config(corpus, tmp_path / "parts", tokenizer), num_parts, k, block_docs)
    return single, tmp_path / "parts"


def assert_same_tokens(merged, reference):
    a, b = tokens(merged), tokens(reference)
    assert a.keys() == b.keys() == {"train", "validation"}
    for split in a:
        assert a[split][1] == b[split][1]  # documents
        assert np.array_equal(a[split][0], b[split][0]), split
    assert load_dataset_meta(merged).tokenizer_sha256 == load_dataset_meta(reference).tokenizer_sha256


@pytest.mark.parametrize("num_parts, block_docs", [(2, 37), (3, 40)])
def test_merged_parts_equal_a_single_process_preparation_token_for_token(tmp_path, tiny_dataset, num_parts, block_docs):
    corpus = write_corpus(tmp_path)
    reference, out = single_and_parts(corpus, tmp_path, tiny_dataset / "tokenizer.model", num_parts, block_docs)
    assert sorted(p.name for p in out.iterdir()) == [f"part-{k:05d}-of-{num_parts:05d}" for k in range(num_parts)]
    merge_parts(out, num_parts, progress=False)
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".bin")) == ["meta.json", "tokenizer.model"]
    assert tokens(reference)["train"][1] > 2 * num_parts * block_docs  # every part got several blocks
    assert_same_tokens(out, reference)


def test_a_local_dataset_read_streaming_splits_into_parts_too(tmp_path, tiny_dataset):
    """A dataset folder's files, as datasets resolves them, go through datasets.load_dataset(..., streaming=True):
    nothing is downloaded or stored beside the tokens."""
    import datasets

    from ngpt_ds.data.sources import CorpusSpec, open_corpus

    folder = tmp_path / "hub_style"
    write_corpus(folder, "part-a.jsonl")
    corpus = open_corpus(CorpusSpec(inputs=(str(folder),)))
    assert corpus.kind == "files" and isinstance(corpus._dataset(list(corpus._files)), datasets.IterableDataset)
    reference, parts = single_and_parts(folder, tmp_path, tiny_dataset / "tokenizer.model", 2, 50)
    merge_parts(parts, 2, progress=False)
    assert_same_tokens(parts, reference)


def prepare_cli(*args, check=False):
    return run(
        [sys.executable, REPO / "launch/prepare_data.py", "--no-progress", "--workers", 1, *args],
        env=cpu_env(),
        check=check,
        timeout=300,
    )


def test_merge_with_a_missing_part_exits_2_naming_it(tmp_path, tiny_dataset):
    corpus = write_corpus(tmp_path)
    out = tmp_path / "parts"
    prepare_cli(
        "--input",
        corpus,
        "--tokenizer",
        tiny_dataset / "tokenizer.model",
        "--val-fraction",
        0.1,
        "--out",
        out,
        "--num-shards",
        3,
        "--shard-index",
        1,
        "--shard-block-docs",
        40,
        check=True,
    )
    proc = prepare_cli("--merge", "--num-shards", 3, "--out", out)
    assert proc.returncode == 2, proc.stderr
    assert "error: --merge: 2 of 3 parts missing" in proc.stderr and "part(s) 0, 2" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "meta.json").exists() and (out / "part-00001-of-00003" / "part.json").is_file()


def test_merge_of_parts_from_different_tokenizers_exits_2(tmp_path, tiny_dataset):
    corpus = write_corpus(tmp_path)
    other = (
        prepare_dataset(
            PrepareConfig(
                inputs=(str(corpus),),
                out=tmp_path / "other",
                vocab_size=400,
                val_fraction=0.1,
                workers=1,
                progress=False,
            )
        )
        / "tokenizer.model"
    )
    out = tmp_path / "parts"
    prepare_part(config(corpus, out, tiny_dataset / "tokenizer.model"), 2, 0, 40)
    prepare_part(config(corpus, out, other), 2, 1, 40)
    proc = prepare_cli("--merge", "--num-shards", 2, "--out", out)
    assert proc.returncode == 2, proc.stderr
    assert "error: --merge: the parts were tokenized with different tokenizers" in proc.stderr
    assert "part 1 with" in proc.stderr and not (out / "meta.json").exists()


def test_part_without_tokenizer_and_bad_index_are_refused(tmp_path):
    corpus = write_corpus(tmp_path)
    proc = prepare_cli("--input", corpus, "--out", tmp_path / "o", "--num-shards", 2, "--shard-index", 0)
    assert proc.returncode == 2 and "--num-shards needs --tokenizer" in proc.stderr
    proc = prepare_cli(
        "--input", corpus, "--out", tmp_path / "o", "--tokenizer", corpus, "--num-shards", 2, "--shard-index", 2
    )
    assert proc.returncode == 2 and "--shard-index 2: must be in 0..1" in proc.stderr


def test_a_finished_part_is_redone_only_with_overwrite(tmp_path, tiny_dataset):
    corpus = write_corpus(tmp_path)
    cfg = config(corpus, tmp_path / "parts", tiny_dataset / "tokenizer.model")
    first = prepare_part(cfg, 2, 0, 40)
    before = (first / "part.json").read_text()
    with pytest.raises(NgptConfigError, match=r"part 0 of 2 is already in .*pass --overwrite"):
        prepare_part(cfg, 2, 0, 40)
    cfg.overwrite = True
    assert prepare_part(cfg, 2, 0, 40) == first
    assert (first / "part.json").read_text() == before
    assert [p.name for p in (tmp_path / "parts").iterdir()] == [first.name]  # no staging left behind


def test_a_merge_over_a_dataset_holding_a_run_is_refused(tmp_path, tiny_dataset):
    """Fault: `prepare_data.py --merge --overwrite` replaced the dataset folder whole, deleting a training run
    inside it (P/run1/train.lock, checkpoints/), exit 0; --overwrite of a plain preparation refused that."""
    corpus = write_corpus(tmp_path)
    out = tmp_path / "parts"
    for k in range(2):
        prepare_part(config(corpus, out, tiny_dataset / "tokenizer.model"), 2, k, 40)
    merge_parts(out, 2, progress=False)
    (out / "run1" / "checkpoints" / "step_00000002").mkdir(parents=True)
    (out / "run1" / "train.lock").write_text("host=x pid=1\n")
    for k in range(2):
        prepare_part(config(corpus, out, tiny_dataset / "tokenizer.model", overwrite=True), 2, k, 40)
    with pytest.raises(NgptConfigError) as refused:
        merge_parts(out, 2, overwrite=True, progress=False)
    assert str(refused.value) == (
        f"--out {out} also holds a training run (run1/train.lock, run1/checkpoints); the merge would delete it "
        f"with the folder. Move the run out of {out} first, or choose another path"
    )
    assert (out / "run1" / "train.lock").is_file() and (out / "meta.json").is_file()
