"""`export.py --format hf` of a run whose data was tokenized by a unigram sentencepiece model (which the hf
format refuses: ngpt_ds.hf.tokenizer) is refused before the checkpoint's weights are read."""

import json
import pydoc_data.topics
import sys

import pytest

from conftest import run, tiny_ngpt, tiny_train, write_run_configs

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")


def test_a_unigram_run_is_refused_for_the_hf_format_before_its_weights_are_read(tmp_path, monkeypatch):
    """Fault: the unigram tokenizer was refused only when the export folder was written, after the checkpoint
    had been read and its ZeRO shards consolidated (minutes and the model's size in memory for a large run),
    though the checkpoint's config.yaml names the tokenizer at once."""
    from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import export, loading

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in pydoc_data.topics.topics.values()))
    data = prepare_dataset(
        PrepareConfig(
            inputs=(str(corpus),),
            out=tmp_path / "data",
            vocab_size=512,
            val_fraction=0.1,
            workers=1,
            progress=False,
            tokenizer_type="unigram",
        )
    )
    configs = write_run_configs(tmp_path, tiny_ngpt(), tiny_train(1))
    out = tmp_path / "run"
    run([sys.executable, "launch/train.py", "--config", configs["yaml"], "--deepspeed_config", configs["ds"],
         "--data", data, "--out", out, "--no-progress"])  # fmt: skip

    read = []
    original = loading.read_checkpoint_weights
    monkeypatch.setattr(loading, "read_checkpoint_weights", lambda *a: read.append(a[0]) or original(*a))
    with pytest.raises(NgptConfigError, match=r"a unigram sentencepiece model does not convert exactly") as err:
        export.export_model(out, tmp_path / "hf", format="hf")
    assert str(err.value).startswith(f"tokenizer {data / 'tokenizer.model'}: ")
    assert read == []
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf.*"))  # no staging folder left
    # The ngpt_ds format takes the same run.
    assert (export.export_model(out, tmp_path / "ngpt_ds") / "model.safetensors").is_file()
