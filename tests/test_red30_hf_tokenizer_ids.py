"""An `--format hf` folder whose tokenizer files give a token id past the model's embedding, or name a special token
the vocabulary lacks, is refused where its config.json is read, naming the file.

Fault: only tokenizer.json's sha256 is recorded by the export. An added_tokens.json, an added_tokens_decoder entry in
tokenizer_config.json, or a tokenizer.json in a folder without the record giving id 600 to a model of 512 ids, and an
eos_token or pad_token naming a token the vocabulary lacks (transformers adds it as id 512), all loaded without a word
(AutoConfig, from_pretrained, lm-eval's hf model): len(tokenizer) grew past the embedding, and the model then refused
each text holding the token, or each batch padded with it, at its forward, naming no file. The config class now
checks the ids and names (ngpt_ds.hf.token_ids.check_token_ids) against config.json's vocab_size.
"""

from __future__ import annotations

import json

import pytest
from hf_exports import FIX, auto_config

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")


def _edit(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _refusal(folder):
    from ngpt_ds.errors import NgptConfigError

    with pytest.raises(NgptConfigError) as caught:
        auto_config(folder)
    return str(caught.value)


def test_red30_added_tokens_json_past_the_embedding_is_refused(hf_export_copy):
    (hf_export_copy / "added_tokens.json").write_text(json.dumps({"<extra>": 600}))
    assert _refusal(hf_export_copy) == (
        f"{hf_export_copy / 'added_tokens.json'}: token '<extra>' has id 600, but the model's embedding holds 512 ids "
        f"(0 to 511, vocab_size in config.json): texts holding it could not be read; {FIX}"
    )


def test_red30_added_tokens_decoder_past_the_embedding_is_refused(hf_export_copy):
    entry = {"content": "<extra>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    _edit(hf_export_copy / "tokenizer_config.json", added_tokens_decoder={"512": {**entry, "special": True}})
    assert _refusal(hf_export_copy) == (
        f"{hf_export_copy / 'tokenizer_config.json'}: token '<extra>' has id '512', but the model's embedding holds 512 ids "
        f"(0 to 511, vocab_size in config.json): texts holding it could not be read; {FIX}"
    )


def test_red30_unrecorded_tokenizer_json_with_an_id_past_the_embedding_is_refused(hf_export_copy):
    config = json.loads((hf_export_copy / "config.json").read_text())
    del config["ngpt_ds_export"]  # a folder without the export's record of tokenizer.json
    (hf_export_copy / "config.json").write_text(json.dumps(config))
    tokenizer = json.loads((hf_export_copy / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"]["zzz"] = 700
    (hf_export_copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert _refusal(hf_export_copy) == (
        f"{hf_export_copy / 'tokenizer.json'}: token 'zzz' has id 700, but the model's embedding holds 512 ids "
        f"(0 to 511, vocab_size in config.json): texts holding it could not be read; {FIX}"
    )


@pytest.mark.parametrize("name", ["special_tokens_map.json", "tokenizer_config.json"])
def test_red30_special_token_missing_from_the_vocabulary_is_refused(hf_export_copy, name):
    path = hf_export_copy / name
    if name == "special_tokens_map.json":
        path.write_text(json.dumps({"eos_token": "</s>", "pad_token": {"content": "<nope>", "special": True}}))
    else:
        _edit(path, pad_token="<nope>")
    assert _refusal(hf_export_copy) == (
        f"{path}: pad_token = '<nope>' is no token of the tokenizer: transformers would add it with id 512 or above, "
        f"past the model's embedding (512 ids, vocab_size in config.json); {FIX}"
    )


def test_red30_the_exported_tokenizer_files_pass_and_give_ids_inside_the_embedding(hf_export_copy):
    from transformers import AutoTokenizer

    (hf_export_copy / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>", "unk_token": "<unk>"}))
    assert auto_config(hf_export_copy).vocab_size == 512
    tokenizer = AutoTokenizer.from_pretrained(str(hf_export_copy))
    assert (len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id) == (512, 2, 2)


def test_red30_an_edited_vocab_size_is_named_in_config_json_not_blamed_on_the_recorded_tokenizer(hf_export_copy):
    from transformers import AutoModelForCausalLM

    from ngpt_ds.errors import NgptConfigError

    _edit(hf_export_copy / "config.json", vocab_size=256)
    with pytest.raises(NgptConfigError) as caught:
        AutoModelForCausalLM.from_pretrained(str(hf_export_copy))
    assert str(caught.value).startswith(
        f"{hf_export_copy / 'config.json'}: vocab_size = 256, but the weights in model.safetensors were exported "
        "with vocab_size = 512"
    )
