"""Fault (part27): parts prepared on two nodes from different copies of the corpus at the same path, with the same
number of documents, were merged without a word into a mix of two corpora; README "Preparing across nodes"
promises parts of other corpora are refused at the merge.

Each part hashes the whole document stream it reads (ngpt_ds.data.parts, `corpus_sha256` in part.json); the merge
refuses parts whose hashes differ (exit 2, one line naming both parts), and compares nothing when a part was written
before the hash was recorded. Real launch/prepare_data.py runs; node B's copy is stood in for by rewriting the
corpus file, uppercased (same documents count, other content), between the two parts.
"""

import hashlib
import json
import sys

import pytest
from test_data_parts import write_corpus

from conftest import REPO, cpu_env, run

NUM_PARTS, BLOCK_DOCS = 2, 40


def prepare_cli(*args, check=False):
    return run(
        [sys.executable, REPO / "launch/prepare_data.py", "--no-progress", "--workers", 1, *args],
        env=cpu_env(),
        check=check,
        timeout=300,
    )


def prepare_part(corpus, out, tokenizer, k):
    prepare_cli(
        "--input", corpus, "--tokenizer", tokenizer, "--val-fraction", 0.1, "--out", out,
        "--num-shards", NUM_PARTS, "--shard-index", k, "--shard-block-docs", BLOCK_DOCS,
        check=True,
    )  # fmt: skip


def part_json(out, k):
    return out / f"part-{k:05d}-of-{NUM_PARTS:05d}" / "part.json"


def corpus_documents(path):
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def expected_hash(texts):
    """The documented hash: per document, its UTF-8 length as 8 little-endian bytes, then its bytes."""
    h = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def uppercase_copy(corpus):
    """Node B's copy at the same path: same documents, uppercased."""
    texts = corpus_documents(corpus)
    corpus.write_text("".join(json.dumps({"text": t.upper()}) + "\n" for t in texts))
    return texts


def test_parts_from_different_copies_of_the_corpus_are_refused_at_the_merge(tmp_path, tiny_dataset):
    corpus = write_corpus(tmp_path)
    out = tmp_path / "parts"
    tokenizer = tiny_dataset / "tokenizer.model"
    prepare_part(corpus, out, tokenizer, 0)
    texts = uppercase_copy(corpus)
    prepare_part(corpus, out, tokenizer, 1)
    a, b = (json.loads(part_json(out, k).read_text()) for k in range(NUM_PARTS))
    assert a["documents"] == b["documents"] == len(texts) > 2 * NUM_PARTS * BLOCK_DOCS
    assert a["source"] == b["source"]  # the same --input: nothing but the content tells the copies apart

    proc = prepare_cli("--merge", "--num-shards", NUM_PARTS, "--out", out)
    assert proc.returncode == 2, proc.stderr  # the fault: 0, and a dataset of two corpora
    assert a["corpus_sha256"] == expected_hash(texts)
    assert b["corpus_sha256"] == expected_hash([t.upper() for t in texts]) != a["corpus_sha256"]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(
        "error: --merge: part-00000-of-00002 and part-00001-of-00002 read different corpora "
        f"(corpus_sha256 {a['corpus_sha256'][:16]}... and {b['corpus_sha256'][:16]}..., "
        f"with the same --input and {len(texts)} documents)"
    ), errors[0]
    assert "Traceback" not in proc.stderr
    assert not (out / "meta.json").exists()
    assert all(part_json(out, k).is_file() for k in range(NUM_PARTS))  # nothing changed


@pytest.mark.parametrize("old_format_part", [None, 0, 1])
def test_parts_of_the_same_corpus_still_merge_and_old_format_parts_too(tmp_path, tiny_dataset, old_format_part):
    """Same corpora merge; a part written before the hash was recorded (no corpus_sha256) merges with any part."""
    corpus = write_corpus(tmp_path)
    out = tmp_path / "parts"
    tokenizer = tiny_dataset / "tokenizer.model"
    for k in range(NUM_PARTS):
        prepare_part(corpus, out, tokenizer, k)
    texts = corpus_documents(corpus)
    for k in range(NUM_PARTS):
        assert json.loads(part_json(out, k).read_text())["corpus_sha256"] == expected_hash(texts)
    if old_format_part is not None:
        path = part_json(out, old_format_part)
        info = json.loads(path.read_text())
        del info["corpus_sha256"]
        path.write_text(json.dumps(info, indent=2) + "\n")
    proc = prepare_cli("--merge", "--num-shards", NUM_PARTS, "--out", out)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert sum(split["documents"] for split in meta["splits"].values()) == len(texts)


@pytest.mark.parametrize("bad", [5, "abc", "A" * 64, None])
def test_a_malformed_corpus_sha256_is_refused_naming_the_field(tmp_path, bad):
    """part_files.read_part: a corpus_sha256 that is not a sha256 is refused, not compared (None is an old part)."""
    from ngpt_ds.data.part_files import PART_FORMAT, read_part
    from ngpt_ds.errors import NgptConfigError

    info = {"format": PART_FORMAT, "block_docs": 40, "documents": 0, "dtype": "uint16", "tokenizer_sha256": "x",
            "blocks": [], "corpus_sha256": bad}  # fmt: skip
    (tmp_path / "part.json").write_text(json.dumps(info))
    if bad is None:
        assert read_part(tmp_path)["corpus_sha256"] is None
        return
    with pytest.raises(NgptConfigError, match=r"corpus_sha256 = .*: must be a sha256; prepare that part again"):
        read_part(tmp_path)
