"""Fault (session 32): meta.json's vocab_size and eos_id were never compared with the tokenizer beside them. The
trainer builds the model with meta.json's vocab_size, so a meta.json edited to 511 or 513 beside the 512-piece
tokenizer (whose sha256 still matched) passed every startup check and trained a model of another vocabulary: it
failed later, at the first window holding id 511, or in generate.py at the first id the tokenizer does not have.
Found by a run of launch/train.py on each of 64 crafted copies of a prepared dataset; these were the ones trained.
"""

import json
import shutil

import pytest

from conftest import tiny_ngpt, tiny_train, train_run, write_ds_config, write_yaml


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("vocab_size", 513, "meta.json vocab_size = 513: the tokenizer tokenizer.model has 512 pieces"),
        ("vocab_size", 511, "meta.json vocab_size = 511: the tokenizer tokenizer.model has 512 pieces"),
        ("eos_id", -1, "meta.json eos_id = -1: the tokenizer tokenizer.model's EOS piece is id 2"),
        ("eos_id", 10**9, "meta.json eos_id = 1000000000: the tokenizer tokenizer.model's EOS piece is id 2"),
    ],
)
def test_a_meta_json_that_disagrees_with_its_tokenizer_is_refused_at_startup(
    tmp_path, tiny_dataset, field, value, expected
):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    meta = json.loads((data / "meta.json").read_text())
    assert (meta["vocab_size"], meta["eos_id"]) == (512, 2)
    meta[field] = value
    (data / "meta.json").write_text(json.dumps(meta))
    yaml = write_yaml(tmp_path / "a.yaml", tiny_ngpt(), tiny_train(2))
    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=2, accum=1)
    result = train_run(yaml, ds, data, tmp_path / "run", check=False, forked=True)
    assert result.returncode == 2, result.stderr[-2000:]  # the old code trained: 0
    assert f"error: dataset {data}: 1 problem\n  - {expected}: meta.json was edited or damaged; delete {data}" in (
        result.stderr
    )
    assert not (tmp_path / "run" / "checkpoints").exists()
