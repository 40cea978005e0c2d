"""generate.py refuses an empty prompt before it loads the model.

Fault: an empty --prompt (`--prompt "$UNSET"`), an empty --prompt-file or an empty stdin was refused ("the
prompt is empty") only after the model had been loaded and its description printed: minutes for a large
checkpoint, spent on a run that could not start.
"""

import io
import sys

import pytest

import ngpt_ds.infer
from ngpt_ds.cli.generate import main


@pytest.mark.parametrize("given", ["prompt", "file", "stdin"])
def test_an_empty_prompt_is_refused_before_the_model_is_loaded(given, tmp_path, monkeypatch, capsys):
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded for an empty prompt")

    monkeypatch.setattr(ngpt_ds.infer, "load", no_load)
    empty = tmp_path / "prompt.txt"
    empty.write_bytes(b"")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    option = {"prompt": ["--prompt", ""], "file": ["--prompt-file", str(empty)], "stdin": ["--prompt-file", "-"]}
    source = {"prompt": "--prompt", "file": f"--prompt-file {empty}", "stdin": "--prompt-file - (stdin)"}
    code = main([str(tmp_path / "model"), *option[given], "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        err.strip().splitlines()[-1]
        == f"error: {source[given]} is empty: give the text to continue (at least one token of it)"
    )
