"""Loading a model judges the tokenizer bytes it loaded, and an export records and copies those bytes.

Fault: ngpt_ds.infer.loading.check_tokenizer hashed the tokenizer file again (sha256_file(tokenizer.path))
after Tokenizer.load had read it: a file replaced between the load and the check was hashed in place of the
tokenizer in use. The model's own tokenizer, replaced after its load by another of the same size, was refused;
another tokenizer, replaced by the model's own after its load, passed the check and was used. An export
recorded the hash of the file on disk then, and copied that file, not the tokenizer it had loaded.
"""

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
from test_infer_export import trained  # noqa: F401  (session fixture)
from test_infer_export_load import small_export  # noqa: F401  (module fixture)

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.infer import export_model, load, loading


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def other_tokenizer(tiny_dataset) -> bytes:
    """A sentencepiece model of the same size (512) as the tiny dataset's, but another one (unigram)."""
    import pydoc_data.topics

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(pydoc_data.topics.topics.values())[:200]),
        model_writer=model,
        vocab_size=512,
        model_type="unigram",
        minloglevel=2,
    )
    data = model.getvalue()
    assert data != (tiny_dataset / "tokenizer.model").read_bytes()
    return data


def replace_with(path: Path, data: bytes) -> None:
    path.with_name("swap.tmp").write_bytes(data)
    os.replace(path.with_name("swap.tmp"), path)


def replace_after_load(monkeypatch, data: bytes, only: Path | None = None) -> None:
    """The loader's Tokenizer.load reads its file, then the file (only `only`, when given) is replaced by `data`."""
    real = loading.Tokenizer.load

    def load_then_replace(path):
        tok = real(path)
        if only is None or Path(path) == only:
            replace_with(Path(path), data)
        return tok

    monkeypatch.setattr(loading.Tokenizer, "load", staticmethod(load_then_replace))


def test_check_tokenizer_judges_the_loaded_bytes_not_a_file_replaced_after_the_load(
    small_export,  # noqa: F811
    other_tokenizer,
    tmp_path,
    monkeypatch,
):
    """Fault: check_tokenizer hashed the file at tokenizer.path again. The export's own tokenizer, replaced
    after its load, was refused with the replacing file's hash; a wrong tokenizer (same size), replaced by
    the right one after its load, passed and was the one used."""
    own = (small_export / "tokenizer.model").read_bytes()
    recorded = json.loads((small_export / "config.json").read_text())["tokenizer"]["sha256"]
    assert recorded == sha256(own)

    folder = tmp_path / "right_then_replaced"
    shutil.copytree(small_export, folder)
    replace_after_load(monkeypatch, other_tokenizer)
    loaded = load(folder, device="cpu")
    assert (loaded.tokenizer_sha256, loaded.tokenizer.sha256) == (recorded, recorded)
    assert (folder / "tokenizer.model").read_bytes() == other_tokenizer  # the file was replaced

    folder = tmp_path / "wrong_then_right"
    shutil.copytree(small_export, folder)
    replace_with(folder / "tokenizer.model", other_tokenizer)
    replace_after_load(monkeypatch, own)
    with pytest.raises(NgptConfigError) as err:
        load(folder, device="cpu")
    assert str(err.value) == (
        f"tokenizer {folder / 'tokenizer.model'} (sha256 {sha256(other_tokenizer)[:12]}…) is not the one the "
        f"model in {folder} was trained with (sha256 {recorded[:12]}…), although both have 512 pieces; token ids "
        "would mean different text. Use the model's own tokenizer.model"
    )


def test_export_records_and_copies_the_tokenizer_it_loaded_when_the_file_is_replaced_after_the_load(
    trained,  # noqa: F811
    other_tokenizer,
    tmp_path,
    monkeypatch,
):
    """Fault: the export took the tokenizer's hash and copy from the file on disk after the load. Given as
    --tokenizer, a copy of the model's tokenizer replaced after its load by another of the same size was refused
    (the hash of the file then); with the hash taken from the bytes alone, the copy into the export was still
    the replacing file (shutil.copyfile of the path), and the export failed its own read-back."""
    own = (trained["data"] / "tokenizer.model").read_bytes()
    given = tmp_path / "given.model"
    given.write_bytes(own)
    replace_after_load(monkeypatch, other_tokenizer, only=given)
    out = export_model(trained["checkpoint"], tmp_path / "export", tokenizer=given)
    config = json.loads((out / "config.json").read_text())
    assert config["tokenizer"]["sha256"] == sha256(own)
    assert (out / "tokenizer.model").read_bytes() == own
    assert given.read_bytes() == other_tokenizer  # the file given was replaced after it was loaded
