"""Perplexity evaluation: at 1x seq_len on the trainer's windows it equals the trainer's eval loss;
longer contexts cut the same split into longer windows; the CLI prints the table."""

import json
import math
import sys

import pytest
import torch.nn.functional as F
from test_infer_export import MICRO, RANKS, TRAIN, exported, trained  # noqa: F401  (session fixtures)

from conftest import REPO, run


def test_loss_at_training_context_equals_the_trainers_eval_loss(trained, exported):  # noqa: F811
    from ngpt_ds.infer import evaluate, load

    trainer_val_loss = trained["summary"]["val_loss"]
    for source in (trained["checkpoint"], exported):
        loaded = load(source)
        (one_x,) = evaluate(loaded, trained["data"], multiples=[1])  # default windows: the trainer's
        assert one_x.windows == TRAIN["eval_batches"] * MICRO * RANKS
        assert one_x.tokens == one_x.windows * 32
        print(f"evaluate 1x: {one_x.loss:.7f}, trainer eval loss {trainer_val_loss:.7f}")
        assert one_x.loss == pytest.approx(trainer_val_loss, abs=2e-6)
        assert one_x.perplexity == pytest.approx(math.exp(one_x.loss))
    # Other batch sizes and window counts: the same loss for the same windows, a different one otherwise.
    (again,) = evaluate(loaded, trained["data"], multiples=[1], batch_size=3)
    assert again.loss == pytest.approx(one_x.loss, abs=1e-6)
    (more,) = evaluate(loaded, trained["data"], multiples=[1], windows=40)
    assert more.windows == 40 and more.loss != pytest.approx(one_x.loss, abs=1e-6)


def test_long_context_windows_are_scored_directly(trained, exported):  # noqa: F811
    from ngpt_ds.data.loader import validation_batches
    from ngpt_ds.infer import evaluate, load

    loaded = load(exported)
    results = evaluate(loaded, trained["data"], contexts=[64, 128], windows=5, batch_size=2)
    assert [r.context for r in results] == [64, 128] and [r.multiple for r in results] == [2.0, 4.0]
    for r in results:
        # The same windows, scored one at a time with a plain cross-entropy.
        losses = []
        for inputs, targets in validation_batches(trained["data"], r.context, 1, 0, 1, max_batches=5):
            logits, _ = loaded.model(inputs)
            losses.append(F.cross_entropy(logits[0], targets[0], reduction="sum").item())
        assert r.windows == 5 and r.tokens == 5 * r.context
        assert r.loss == pytest.approx(sum(losses) / r.tokens, abs=1e-5)


def test_evaluate_cli_prints_a_table_and_json(trained, exported, tmp_path):  # noqa: F811
    out = tmp_path / "ppl.json"
    proc = run([sys.executable, REPO / "launch/evaluate.py", exported, "--json", out])
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split() == ["context", "x", "train", "windows", "tokens", "loss", "perplexity"]
    assert [line.split()[0] for line in lines[1:]] == ["32", "64", "128"]
    results = json.loads(out.read_text())["results"]
    assert results[0]["loss"] == pytest.approx(trained["summary"]["val_loss"], abs=2e-6)
    assert f"{results[0]['loss']:.4f}" in lines[1]


def test_dataset_with_another_tokenizer_is_refused(trained, exported, tmp_path):  # noqa: F811
    import shutil

    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import evaluate, load

    other = tmp_path / "other_data"
    shutil.copytree(trained["data"], other)
    meta = json.loads((other / "meta.json").read_text())
    tok = other / meta["tokenizer"]["path"]
    tok.write_bytes(tok.read_bytes() + b"\0")  # another tokenizer file (hash recorded to match it)
    from ngpt_ds.data.shards import sha256_file

    meta["tokenizer"]["sha256"] = sha256_file(tok)
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(NgptConfigError, match="not with this model's tokenizer"):
        evaluate(load(exported), other)
