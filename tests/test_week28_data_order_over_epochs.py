"""A run that wraps its dataset several times, resumed in the middle of its third epoch, draws the same batches
as the uninterrupted run: its losses are bit-equal, step by step (2 ranks, gloo, ZeRO 2, 2 micro-batches a step).

The loader's own resume across epoch ends is tests/test_data_loader.py's; this is the trainer's, end to end: the
epoch counter, the position in the epoch and the per-epoch permutation all travel through a real checkpoint.
"""

import json

import pytest

from conftest import read_metrics, tiny_ngpt, tiny_train, train_run, write_ds_config, write_yaml

STEPS = 30
RESUME_AT = 18


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """13 documents of at most 800 characters: 4072 training tokens, 123 windows of 33 tokens, 7 steps of 16
    windows an epoch (the remainder of 11 windows dropped each epoch)."""
    import pydoc_data.topics

    from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset

    root = tmp_path_factory.mktemp("small_corpus")
    texts, total = [], 0
    for text in pydoc_data.topics.topics.values():
        texts.append(text[:800])
        total += len(texts[-1])
        if total > 9000:
            break
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return prepare_dataset(
        PrepareConfig(
            inputs=(str(corpus),), out=root / "data", vocab_size=512, val_fraction=0.1, workers=1, progress=False
        )
    )


def test_a_resume_in_the_third_epoch_draws_the_uninterrupted_runs_batches(tmp_path, small_corpus):
    meta = json.loads((small_corpus / "meta.json").read_text())
    windows = meta["splits"]["train"]["tokens"] // 33
    steps_per_epoch = windows // 16
    assert (windows, steps_per_epoch) == (123, 7)
    assert 2 * steps_per_epoch < RESUME_AT < 3 * steps_per_epoch < STEPS  # the third epoch; 4 wraps in all

    config = write_yaml(tmp_path / "c.yaml", tiny_ngpt(), tiny_train(STEPS, checkpoint_interval=9, keep_checkpoints=4))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=2)
    whole = tmp_path / "whole"
    train_run(config, ds, small_corpus, whole, nproc=2)
    checkpoint = whole / "checkpoints" / f"step_{RESUME_AT:08d}"
    assert checkpoint.is_dir()

    resumed = tmp_path / "resumed"
    proc = train_run(config, ds, small_corpus, resumed, "--resume", checkpoint, nproc=2)
    assert "resum" in proc.stdout.lower(), proc.stdout[-2000:]

    want = {r["step"]: r["train/loss"] for r in read_metrics(whole)}
    got = {r["step"]: r["train/loss"] for r in read_metrics(resumed)}
    assert sorted(want) == list(range(1, STEPS + 1))
    assert sorted(got) == list(range(RESUME_AT + 1, STEPS + 1))
    assert [got[s] for s in got] == [want[s] for s in got]  # bit-equal floats, epochs 3 to 5
    assert len({want[s] for s in range(1, STEPS + 1)}) == STEPS  # no two steps alike: the comparison has teeth
    tokens = {r["step"]: r["train/tokens"] for r in read_metrics(resumed)}
    assert tokens[STEPS] == STEPS * 16 * 32
