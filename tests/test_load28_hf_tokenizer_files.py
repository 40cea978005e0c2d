"""An `--format hf` export's tokenizer files are checked where its config.json is read, before a model or lm-eval
hands the folder to transformers' tokenizer code.

Fault: a folder whose tokenizer.json was a link out of the folder, a named pipe, a 257 MiB file, or a file replaced
after the export (other ids for the same text) loaded its config and model without a word, and transformers' own
AutoTokenizer then read that file unchecked (lm-eval's `hf` model loads AutoConfig, the model and AutoTokenizer from
the same folder). The export's config class (ngpt_ds.hf.configuration_ngpt, with ngpt_ds imported or with
trust_remote_code) now checks the tokenizer files when it reads a folder (saved_weights.check_tokenizer_files): a
regular file of the folder itself, at most 256 MiB, and tokenizer.json the one whose sha256 the export records in
config.json (ngpt_ds_export.tokenizer_json_sha256).

Not covered: AutoTokenizer.from_pretrained(folder) alone catches the config class's ValueError and reads the folder
with a generic config, so its own read of tokenizer.json stays unchecked.
"""

from __future__ import annotations

import json
import os

import pytest
from fed_pipe import fed_pipe
from hf_exports import FIX, auto_config

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")


def _tokenizer(folder):
    from transformers import AutoTokenizer

    import ngpt_ds  # noqa: F401  (registers the config class)

    return AutoTokenizer.from_pretrained(str(folder))


def test_the_export_records_its_tokenizer_json_and_loads(hf_export_copy, tiny_dataset):
    import hashlib

    from ngpt_ds.data.tokenizer import Tokenizer

    recorded = json.loads((hf_export_copy / "config.json").read_text())["ngpt_ds_export"]["tokenizer_json_sha256"]
    assert recorded == hashlib.sha256((hf_export_copy / "tokenizer.json").read_bytes()).hexdigest()
    text = "Hello world, two  spaces"
    assert _tokenizer(hf_export_copy)(text)["input_ids"] == Tokenizer.load(tiny_dataset / "tokenizer.model").encode(
        text
    )


def test_a_tokenizer_json_linked_out_of_the_folder_is_refused(hf_export_copy, tmp_path):
    from ngpt_ds.errors import NgptConfigError

    outside = tmp_path / "elsewhere.json"
    (hf_export_copy / "tokenizer.json").rename(outside)
    (hf_export_copy / "tokenizer.json").symlink_to(outside)
    with pytest.raises(NgptConfigError) as caught:
        auto_config(hf_export_copy)
    assert str(caught.value) == (
        f"{hf_export_copy / 'tokenizer.json'} is a link to {os.path.realpath(outside)}, outside the folder, not a tokenizer "
        f"file of the folder; {FIX}"
    )


def test_a_tokenizer_json_that_is_a_named_pipe_is_refused_unopened(hf_export_copy):
    from ngpt_ds.errors import NgptConfigError

    pipe = hf_export_copy / "tokenizer.json"
    pipe.unlink()
    with fed_pipe(pipe, b"{}"), pytest.raises(NgptConfigError) as caught:
        auto_config(hf_export_copy)
    assert str(caught.value) == f"{pipe} is a named pipe, not a tokenizer file of the folder; {FIX}"


def test_a_tokenizer_json_over_256_mib_is_refused_unread(hf_export_copy):
    from ngpt_ds.errors import NgptConfigError

    big = hf_export_copy / "tokenizer.json"
    with big.open("r+b") as f:
        f.truncate((256 << 20) + 1)  # sparse: nothing more on disk
    with pytest.raises(NgptConfigError) as caught:
        auto_config(hf_export_copy)
    assert str(caught.value) == (
        f"{big} holds {(256 << 20) + 1} bytes, over the 256 MiB a tokenizer file may hold, not a tokenizer file of "
        f"the folder; {FIX}"
    )


def test_a_tokenizer_json_replaced_after_the_export_is_refused(hf_export_copy):
    import hashlib

    from ngpt_ds.errors import NgptConfigError

    path = hf_export_copy / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[10:12]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # two pieces swap ids: same size, other text
    path.write_text(json.dumps(data))
    recorded = json.loads((hf_export_copy / "config.json").read_text())["ngpt_ds_export"]["tokenizer_json_sha256"]
    now = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(NgptConfigError) as caught:
        auto_config(hf_export_copy)
    assert str(caught.value) == (
        f"{path} (sha256 {now[:12]}…) is not the tokenizer.json the export wrote (sha256 {recorded[:12]}…, "
        f"tokenizer_json_sha256 in config.json): it was replaced or altered, and token ids would mean other text; {FIX}"
    )


def test_from_pretrained_of_the_model_refuses_a_replaced_tokenizer_json(hf_export_copy):
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401
    from ngpt_ds.errors import NgptConfigError

    path = hf_export_copy / "tokenizer.json"
    path.write_text(path.read_text().replace('"</s>"', '"</S>"', 1))
    with pytest.raises(NgptConfigError, match=r"is not the tokenizer.json the export wrote"):
        AutoModelForCausalLM.from_pretrained(str(hf_export_copy))
