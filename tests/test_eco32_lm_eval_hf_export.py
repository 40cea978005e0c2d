"""The ngpt_ds lm-eval model reads an `export.py --format hf` folder (fault: it refused one, "is a transformers export
(export.py --format hf): ... export the checkpoint with --format ngpt_ds", so the same checkpoint had to be exported
twice to be scored by ngpt-lm-eval). The hf folder's scores equal the native export's of the same model, and none of
the folder's .py files is imported (no code from a shared folder runs)."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install -e .[eval]")

REQUESTS = [
    ("Question: what is it?", " the answer"),
    ("", " the answer"),
    ("Once upon a time", " there was a model"),
    ("a", "b c d e f g"),
]


@pytest.fixture(scope="module")
def both_exports(tmp_path_factory, tiny_dataset):
    """The same seeded model exported --format ngpt_ds and --format hf."""
    from random_export import export_random_ngpt

    root = tmp_path_factory.mktemp("eco32_both")
    tok = tiny_dataset / "tokenizer.model"
    (root / "a").mkdir()
    (root / "b").mkdir()
    native, logits = export_random_ngpt(root / "a", tok, "ngpt_ds")
    hf, hf_logits = export_random_ngpt(root / "b", tok, "hf")
    assert (logits - hf_logits).abs().max().item() == 0.0  # the same seeded model
    return native, hf


def _scores(lm, requests):
    from lm_eval.api.instance import Instance

    return lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(requests)])


def test_an_hf_export_scores_as_its_native_export(both_exports):
    from ngpt_ds.infer.lm_eval_adapter import NgptLM

    native, hf = both_exports
    before = set(sys.modules)
    hf_lm = NgptLM(path=str(hf), device="cpu", batch_size=2)
    imported = {name for name in set(sys.modules) - before if "modeling_ngpt" in name or "configuration_ngpt" in name}
    assert not {m for m in imported if not m.startswith("ngpt_ds.")}, imported  # transformers_modules.* = folder code
    native_lm = NgptLM(path=str(native), device="cpu", batch_size=2)
    assert hf_lm.tok_encode("Once upon a time") == native_lm.tok_encode("Once upon a time")
    assert hf_lm.eot_token_id == native_lm.eot_token_id
    assert hf_lm.max_length == native_lm.max_length == 32
    got, want = _scores(hf_lm, REQUESTS), _scores(native_lm, REQUESTS)
    assert len(got) == len(REQUESTS)
    for (g, g_greedy), (w, w_greedy) in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-5, rel=0)
        assert g_greedy == w_greedy
    assert all(score < -1.0 for score, _ in got)  # real log-probs of a random model over 512 pieces, not zeros
    text = "The quick brown fox jumps over the lazy dog. " * 3
    from lm_eval.api.instance import Instance

    rolling = [Instance("loglikelihood_rolling", {}, (text,), 0)]
    assert hf_lm.loglikelihood_rolling(rolling)[0] == pytest.approx(
        native_lm.loglikelihood_rolling(rolling)[0], abs=1e-4, rel=0
    )


def test_an_hf_export_with_its_tokenizer_json_missing_is_refused_naming_it(both_exports, tmp_path):
    import shutil

    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer.lm_eval_adapter import NgptLM

    copy = tmp_path / "hf"
    shutil.copytree(both_exports[1], copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(NgptConfigError) as caught:
        NgptLM(path=str(copy), device="cpu")
    assert str(caught.value).startswith(f"{copy / 'tokenizer.json'} is missing or not a regular file")
