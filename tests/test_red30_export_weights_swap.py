"""An export's model.safetensors is read from the one file opened and judged by its fstat, not by path after a look.

Fault: ngpt_ds.infer.loading.load_export looked at model.safetensors (is_file: a regular file) and then read it by its
path three times (its header for the memory check, safe_open for names and dtypes, load_file for the tensors): a file
swapped for a named pipe after the look made the first read wait forever (generate.py, evaluate.py and the lm-eval
model hung without a word), and a file swapped for another between the reads was loaded unchecked against its header.
The file is now opened once without waiting (O_NONBLOCK), judged by fstat, and every read goes through that open file
(saved_weights.pinned_weights).
"""

from __future__ import annotations

import os

import pytest

from conftest import fails_after


@pytest.fixture(scope="module")
def ngpt_export(tmp_path_factory, tiny_dataset):
    from random_export import export_random_ngpt

    folder, logits = export_random_ngpt(
        tmp_path_factory.mktemp("red30_export"), tiny_dataset / "tokenizer.model", "ngpt_ds"
    )
    return folder, logits


def test_red30_weights_swapped_for_a_named_pipe_after_the_look_are_refused_not_waited_on(
    ngpt_export, tmp_path, monkeypatch
):
    import shutil

    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer.loading import load_export

    folder = tmp_path / "export"
    shutil.copytree(ngpt_export[0], folder)
    weights = folder / "model.safetensors"
    real_stat = os.stat
    seen: dict[str, os.stat_result] = {}

    def look(path, *args, **kwargs):
        if os.fspath(path) != str(weights):
            return real_stat(path, *args, **kwargs)
        if not seen:  # the first look sees the regular file; it is then swapped for a named pipe
            seen["regular"] = real_stat(path, *args, **kwargs)
            weights.unlink()
            os.mkfifo(weights)
        return seen["regular"]  # every later look at the path still sees the file it saw

    monkeypatch.setattr(os, "stat", look)
    with fails_after(10, "load_export of weights swapped for a named pipe"):
        with pytest.raises(NgptConfigError) as caught:
            load_export(folder, device="cpu")
    monkeypatch.undo()
    assert str(caught.value) == f"{weights} is not a regular file; export the checkpoint again"
    assert seen, "the swap never happened: the test did not exercise the window"


def test_red30_pinned_weights_load_the_exported_model(ngpt_export):
    import torch
    from random_export import TOKENS

    from ngpt_ds.infer.loading import load_export

    loaded = load_export(ngpt_export[0], device="cpu")
    with torch.no_grad():
        logits = loaded.model(TOKENS)[0]
    assert torch.equal(logits, ngpt_export[1])
