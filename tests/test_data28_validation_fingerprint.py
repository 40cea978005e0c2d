"""Fault (data28): a resume checked the training data against the checkpoint (config.yaml's train_data_sha256,
ngpt_ds.train.preflight) but nothing about the validation split. Validation shards replaced between a save and a
resume (another held-out set, a copy re-prepared with the same train split) went unnoticed, and the resumed run's
validation losses were read as comparable with those before.

The training loader's state (saved in every checkpoint) now records the validation split's fingerprint
(ngpt_ds.data.fingerprint.split_fingerprint), and loading a state whose fingerprint differs warns, naming --data.
Not refused: the training data is the same. Old code: no warning (the state had no such field).
"""

import json
import shutil

import numpy as np
import pytest
import yaml

from ngpt_ds.data import loader as loader_mod
from ngpt_ds.data import shard_hashes
from ngpt_ds.data.fingerprint import split_fingerprint
from ngpt_ds.data.loader import TokenWindowLoader
from ngpt_ds.data.shards import load_dataset_meta

from conftest import logged_warnings, tiny_ngpt, tiny_train, without_shard_hashes

WARNING_TAIL = (
    ": its validation split is not the one the checkpoint's run evaluated on (its shards, token counts or block "
    "hashes differ from those recorded at the save), so the validation losses from here on are not comparable with "
    "those before the resume. The training split is the same. To keep them comparable, resume with the "
    "checkpoint's dataset (a copy elsewhere is fine)"
)


@pytest.fixture
def loader_warnings():
    with logged_warnings(loader_mod.__name__) as lines:
        yield lines


def train_loader(data):
    return TokenWindowLoader(data, "train", seq_len=16, micro_batch_size=2, dp_rank=0, dp_size=1, seed=3)


def with_other_validation_tokens(tiny_dataset, folder):
    """A copy of `tiny_dataset` whose validation shard holds other tokens (reversed: same count), its meta.json's
    block hashes recorded for them, as a re-prepared dataset would; the train split untouched."""
    shutil.copytree(tiny_dataset, folder)
    raw = json.loads((folder / "meta.json").read_text())
    (shard,) = raw["splits"]["validation"]["shards"]
    path = folder / shard["file"]
    tokens = np.fromfile(path, dtype=np.uint16)
    tokens[::-1].tofile(path)
    shard["sha256_blocks"] = list(shard_hashes.block_hashes(path, raw["hash_block_bytes"]))
    (folder / "meta.json").write_text(json.dumps(raw))
    return folder


def saved_state(tiny_dataset):
    """A loader state as a checkpoint holds it: some steps in, through JSON."""
    first = train_loader(tiny_dataset)
    for _ in range(3):
        first.next_batch()
    return json.loads(json.dumps(first.state_dict()))


def test_a_resume_on_replaced_validation_shards_warns(tmp_path, tiny_dataset, loader_warnings):
    state = saved_state(tiny_dataset)
    other = with_other_validation_tokens(tiny_dataset, tmp_path / "other")
    before, after = load_dataset_meta(tiny_dataset), load_dataset_meta(other)
    assert split_fingerprint(before, "train") == split_fingerprint(after, "train") is not None
    assert split_fingerprint(before, "validation") != split_fingerprint(after, "validation")
    assert state["validation_sha256"] == int(split_fingerprint(before, "validation"), 16)  # old code: KeyError
    assert all(type(v) is int for v in state.values())  # the state is plain ints, as before

    resumed = train_loader(other)
    resumed.load_state_dict(state)
    assert loader_warnings == [f"--data {other}{WARNING_TAIL}"]  # old code: []
    reference = train_loader(tiny_dataset)
    reference.load_state_dict(state)
    for _ in range(2):  # the training stream goes on as it would have
        assert all(np.array_equal(a, b) for a, b in zip(resumed.next_batch(), reference.next_batch(), strict=True))
    assert len(loader_warnings) == 1


def test_the_train_fingerprint_is_the_one_the_resume_check_records(tiny_dataset):
    """split_fingerprint(data, "train") is config.yaml's train_data_sha256: preflight may call it unchanged."""
    from ngpt_ds.train.preflight import train_data_fingerprint

    meta = load_dataset_meta(tiny_dataset)
    assert split_fingerprint(meta, "train") == train_data_fingerprint(meta)


def test_the_resume_check_of_the_training_data_passes_replaced_validation_shards(tmp_path, tiny_dataset):
    """What the loader's warning covers: the resume's own check (preflight.check_resume_fits) compares only the
    train split, so it lets this dataset through (as it should: the training data is the same)."""
    from ngpt_ds.model import ModelConfig
    from ngpt_ds.train.preflight import check_resume_fits, train_data_fingerprint

    meta = load_dataset_meta(tiny_dataset)
    other = load_dataset_meta(with_other_validation_tokens(tiny_dataset, tmp_path / "other"))
    model = ModelConfig(**{**tiny_ngpt(), "vocab_size": meta.vocab_size})
    step = tmp_path / "step_00000006"
    step.mkdir()
    saved = {"model": model.to_dict(), "tokenizer_sha256": meta.tokenizer_sha256}
    (step / "config.yaml").write_text(yaml.safe_dump({**saved, "train_data_sha256": train_data_fingerprint(meta)}))
    check_resume_fits(step, model, other)  # no error: nothing there looks at the validation split


def test_the_same_validation_split_elsewhere_or_unhashed_or_an_old_state_says_nothing(
    tmp_path, tiny_dataset, loader_warnings
):
    state = saved_state(tiny_dataset)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dataset, copy)  # moved or copied: the same data
    train_loader(copy).load_state_dict(state)
    old_state = {k: v for k, v in state.items() if k != "validation_sha256"}  # saved before the field
    train_loader(with_other_validation_tokens(tiny_dataset, tmp_path / "other")).load_state_dict(old_state)
    unhashed = without_shard_hashes(with_other_validation_tokens(tiny_dataset, tmp_path / "unhashed"))
    assert split_fingerprint(load_dataset_meta(unhashed, verify_contents=False), "validation") is None
    train_loader(unhashed).load_state_dict(state)  # nothing shows it differs: --add-hashes would be no change
    assert loader_warnings == []


def test_a_real_resume_on_replaced_validation_shards_says_so_and_trains_on(tmp_path, tiny_dataset):
    """End to end: launch/train.py trains 2 steps and saves; the resume on a copy with other validation tokens
    warns once and trains to step 4 (exit 0); old code: exit 0 without a word."""
    import sys

    from conftest import read_metrics, run, train_cmd, write_ds_config, write_yaml

    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=4, accum=1)
    out = tmp_path / "run"
    run(
        [
            sys.executable,
            *train_cmd(write_yaml(tmp_path / "two.yaml", tiny_ngpt(), tiny_train(2)), ds, tiny_dataset, out),
        ]
    )
    other = with_other_validation_tokens(tiny_dataset, tmp_path / "other")
    four = write_yaml(tmp_path / "four.yaml", tiny_ngpt(), tiny_train(4))
    proc = run([sys.executable, *train_cmd(four, ds, other, out)])
    said = proc.stdout + proc.stderr
    assert said.count(WARNING_TAIL) == 1 and f"--data {other}{WARNING_TAIL}" in said, said[-3000:]
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4]
