"""A command started without its required argument answers with an example of it, spelled as it was started
(ngpt_ds.cli.Parser): `python launch/generate.py` alone said 'the following arguments are required: MODEL'."""

from __future__ import annotations

import sys

import pytest

from ngpt_ds.cli import evaluate, export, generate


def _error(parse, argv: list[str], script: str, capsys, monkeypatch) -> str:
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as stop:
        parse(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_a_missing_model_is_answered_with_an_example_as_the_command_was_typed(capsys, monkeypatch):
    assert _error(generate.parse_args, [], "launch/generate.py", capsys, monkeypatch) == (
        "error: the following arguments are required: MODEL, e.g. python launch/generate.py runs/ngpt_tiny "
        '--prompt "And God said"; --help lists the options\n'
    )
    assert _error(generate.parse_args, ["runs/x"], "/venv/bin/ngpt-generate", capsys, monkeypatch) == (
        "error: one of the arguments --prompt --prompt-file is required, e.g. ngpt-generate runs/ngpt_tiny "
        '--prompt "And God said"; --help lists the options\n'
    )
    assert _error(evaluate.parse_args, [], "launch/evaluate.py", capsys, monkeypatch) == (
        "error: the following arguments are required: MODEL, e.g. python launch/evaluate.py runs/ngpt_tiny; "
        "--help lists the options\n"
    )
    assert _error(export.parse_args, ["runs/x"], "launch/export.py", capsys, monkeypatch) == (
        "error: the following arguments are required: --out, e.g. python launch/export.py runs/ngpt_tiny "
        "--out exports/ngpt_tiny; --help lists the options\n"
    )


def test_other_usage_errors_get_no_example(capsys, monkeypatch):
    assert _error(export.parse_args, ["runs/x", "--out"], "launch/export.py", capsys, monkeypatch) == (
        "error: argument --out: expected one argument; --help lists the options\n"
    )
