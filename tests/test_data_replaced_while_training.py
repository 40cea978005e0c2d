"""A dataset folder replaced (`prepare_data.py --overwrite`) while a run reads it: the run keeps reading
the dataset it started on, token for token."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ngpt_ds.data.loader import TokenWindowLoader, validation_batches
from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset

SEQ, MBS, SEED, STEPS = 32, 4, 3, 30


def _corpus(path: Path, word: str, docs: int) -> Path:
    rows = (json.dumps({"text": f"{word} document {i} " + f"{word} words of this corpus " * 12}) for i in range(docs))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _prepare(corpus: Path, out: Path, tokenizer: Path | None = None, overwrite: bool = False) -> Path:
    cfg = PrepareConfig(
        inputs=(str(corpus),),
        out=out,
        vocab_size=None if tokenizer else 400,
        tokenizer=tokenizer,
        workers=1,
        progress=False,
        shard_tokens=1500,  # several shards, of which the first batch maps only some
        val_fraction=0.2,
        overwrite=overwrite,
    )
    return prepare_dataset(cfg)


@pytest.mark.parametrize("replacement_docs", [300, 60], ids=["larger", "smaller"])
def test_a_dataset_replaced_while_a_run_reads_it_is_not_read(tmp_path, replacement_docs):
    """Shards were mapped on their first read: a run that had read 1 batch of its 7 shards then read the
    others from the replacement under the old meta.json: 26 of 30 batches other tokens with no message (a
    larger replacement), or 'FileNotFoundError: ... train_000005.bin' mid-run (a smaller one)."""
    data = _prepare(_corpus(tmp_path / "a.jsonl", "alpha", 200), tmp_path / "data")
    kept = Path(shutil.copytree(data, tmp_path / "kept"))  # what the run started on
    loader = TokenWindowLoader(data, "train", SEQ, MBS, 0, 1, seed=SEED)
    val = validation_batches(data, SEQ, MBS, 0, 1)
    assert len(loader.meta.splits["train"].shards) >= 5
    got = [loader.next_batch()]

    _prepare(
        _corpus(tmp_path / "b.jsonl", "beta", replacement_docs),
        data,
        tokenizer=kept / "tokenizer.model",
        overwrite=True,
    )
    assert (
        json.loads((data / "meta.json").read_text())["splits"] != json.loads((kept / "meta.json").read_text())["splits"]
    )

    got += [loader.next_batch() for _ in range(STEPS - 1)]
    ref = TokenWindowLoader(kept, "train", SEQ, MBS, 0, 1, seed=SEED)
    want = [ref.next_batch() for _ in range(STEPS)]
    differing = [i for i, (g, w) in enumerate(zip(got, want)) if not all(np.array_equal(a, b) for a, b in zip(g, w))]
    assert differing == []
    val_got = [x.numpy() for x, _ in val]
    val_want = [x.numpy() for x, _ in validation_batches(kept, SEQ, MBS, 0, 1)]
    assert len(val_got) == len(val_want) >= 2
    assert all(np.array_equal(a, b) for a, b in zip(val_got, val_want))


def test_a_shard_too_short_for_a_window_is_not_opened(tmp_path):
    """Only shards that hold a window are held open."""
    data = _prepare(_corpus(tmp_path / "a.jsonl", "alpha", 200), tmp_path / "data")
    meta = json.loads((data / "meta.json").read_text())
    shards = meta["splits"]["train"]["shards"]
    seq = shards[-1]["tokens"]  # the last shard holds seq tokens, one short of a window
    assert seq < 1500
    loader = TokenWindowLoader(data, "train", seq, 1, 0, 1, seed=0)
    fds = loader._index._fds
    assert [fd is not None for fd in fds] == [True] * (len(shards) - 1) + [False]
    assert sum(fd is not None for fd in fds) >= 1
