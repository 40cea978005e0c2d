"""An export's tokenizer.model (or --tokenizer FILE) that is a named pipe or a folder: refused in one line that
says what stands there, before the model loads, by generate, evaluate and the lm-eval adapter."""

from __future__ import annotations

import os
import shutil

import pytest
from test_infer_export_load import small_export  # noqa: F401  (module fixture)

from ngpt_ds.errors import NgptConfigError


def _make(path, kind):
    if kind == "named pipe":
        os.mkfifo(path)  # no writer: an open would wait forever
    else:
        path.mkdir()


@pytest.mark.parametrize("kind", ["named pipe", "folder"])
@pytest.mark.parametrize("command", ["generate", "evaluate", "generate --tokenizer"])
def test_a_tokenizer_that_is_no_file_is_named_as_what_it_is(
    small_export,  # noqa: F811
    tiny_dataset,
    tmp_path,
    capsys,
    command,
    kind,
):
    """Fault: a named pipe or a folder at the export's tokenizer.model (or given as --tokenizer) was refused as
    'tokenizer … not found; pass an existing sentencepiece .model file', though the user sees a file of that name
    in the export. Now the line says what is there."""
    from ngpt_ds.cli.evaluate import main as evaluate
    from ngpt_ds.cli.generate import main as generate

    folder = tmp_path / "export"
    shutil.copytree(small_export, folder)
    if command == "generate --tokenizer":
        bad = tmp_path / "given.model"
        extra = ["--tokenizer", str(bad)]
    else:
        bad = folder / "tokenizer.model"
        bad.unlink()
        extra = []
    _make(bad, kind)
    if command == "evaluate":
        rc = evaluate([str(folder), "--data", str(tiny_dataset), "--multiples", "1", "--windows", "1", *extra])
    else:
        rc = generate([str(folder), "--prompt", "x", "--max-new-tokens", "2", *extra])
    out, err = capsys.readouterr()
    assert (rc, out) == (2, "")
    assert err.splitlines()[-1] == (
        f"error: tokenizer {bad} is a {kind}, not a sentencepiece .model file; pass an existing sentencepiece "
        ".model file"
    )


def test_the_lm_eval_adapter_names_a_tokenizer_that_is_a_named_pipe(small_export, tmp_path):  # noqa: F811
    """The lm-eval adapter loads through the same loader: the same line, before any weight is read."""
    pytest.importorskip("lm_eval", reason="lm-eval is an optional extra")
    from ngpt_ds.infer.lm_eval_adapter import NgptLM

    folder = tmp_path / "export"
    shutil.copytree(small_export, folder)
    (folder / "tokenizer.model").unlink()
    os.mkfifo(folder / "tokenizer.model")
    with pytest.raises(NgptConfigError) as caught:
        NgptLM(path=str(folder), device="cpu")
    assert str(caught.value) == (
        f"tokenizer {folder / 'tokenizer.model'} is a named pipe, not a sentencepiece .model file; pass an existing "
        "sentencepiece .model file"
    )
