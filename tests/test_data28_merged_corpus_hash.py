"""Fault (data28): the merge checked that every part read the same corpus (`corpus_sha256` in part.json) and then
dropped the hash: the merged meta.json named no corpus, so nothing in a dataset told which corpus (which copy of
it) its tokens came from. The merged meta.json now carries `corpus_sha256`, DatasetMeta reads it (and
`--add-hashes`, which rewrites meta.json from it, keeps it); where a part recorded none, none is claimed.

Old code: KeyError 'corpus_sha256' on the merged meta.json.
"""

import json

import pytest
from test_data_parts import config, write_corpus
from test_part27_corpus_mismatch import corpus_documents, expected_hash

from ngpt_ds.data.parts import merge_parts, prepare_part
from ngpt_ds.data.shards import load_dataset_meta, write_meta
from ngpt_ds.errors import NgptConfigError

NUM_PARTS, BLOCK_DOCS = 2, 40


def parts_of(tmp_path, tiny_dataset):
    corpus = write_corpus(tmp_path)
    out = tmp_path / "parts"
    for k in range(NUM_PARTS):
        prepare_part(config(corpus, out, tiny_dataset / "tokenizer.model"), NUM_PARTS, k, BLOCK_DOCS)
    return corpus, out


def test_the_merged_meta_json_names_the_corpus_the_parts_read(tmp_path, tiny_dataset):
    corpus, out = parts_of(tmp_path, tiny_dataset)
    merge_parts(out, NUM_PARTS, progress=False)
    want = expected_hash(corpus_documents(corpus))
    assert json.loads((out / "meta.json").read_text())["corpus_sha256"] == want  # old code: KeyError
    meta = load_dataset_meta(out)
    assert meta.corpus_sha256 == want
    write_meta(meta, out)  # what --add-hashes does: the hash stays
    assert json.loads((out / "meta.json").read_text())["corpus_sha256"] == want


def test_a_merge_with_a_part_that_recorded_no_corpus_hash_claims_none(tmp_path, tiny_dataset):
    """Not a fault of the old code: a part from before the hash merges, and the merged dataset claims no corpus."""
    _, out = parts_of(tmp_path, tiny_dataset)
    path = out / f"part-00001-of-{NUM_PARTS:05d}" / "part.json"
    info = json.loads(path.read_text())
    del info["corpus_sha256"]
    path.write_text(json.dumps(info))
    merge_parts(out, NUM_PARTS, progress=False)
    assert "corpus_sha256" not in json.loads((out / "meta.json").read_text())
    assert load_dataset_meta(out).corpus_sha256 is None


@pytest.mark.parametrize("bad", ["abc", 12, "A" * 64])
def test_a_malformed_corpus_hash_in_meta_json_is_refused_naming_the_file(tmp_path, tiny_dataset, bad):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    raw = json.loads((data / "meta.json").read_text())
    raw["corpus_sha256"] = bad
    (data / "meta.json").write_text(json.dumps(raw))
    with pytest.raises(NgptConfigError) as err:
        load_dataset_meta(data)
    assert str(err.value) == (
        f"{data / 'meta.json'}: missing or malformed field (ValueError: corpus_sha256 = {str(bad)!r} is not a "
        "sha256); the file is damaged or was not written by ngpt_ds; prepare it with `python launch/prepare_data.py "
        "--input CORPUS --out DIR`"
    )
