"""--help texts that promised what the trainer does not do."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from ngpt_ds.cli.prepare import build_parser
from ngpt_ds.cli.train import parse_args


def _help(parse) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        parse()
    assert stop.value.code == 0
    return re.sub(r"\s+", " ", out.getvalue())


def test_prepare_help_says_the_trainer_refuses_a_dataset_without_a_validation_split():
    """Fault: `--val-fraction` said "0 for none" and nothing more: the dataset it made was refused by the trainer
    ("has no 'validation' split ... re-prepare it with --val-fraction > 0") only after the whole preparation."""
    text = _help(lambda: build_parser().parse_args(["--help"]))
    assert (
        "--val-fraction F fraction of documents held out as the validation split, spread evenly; 0 for none, which "
        "launch/train.py refuses (it evaluates on that split) (default: 0.02; default corpus: 0.05)" in text
    )


def test_train_help_says_what_a_config_without_a_model_section_trains():
    """Fault: --config asked for "a YAML file with model: and train: sections"; a file of train: alone trained the
    built-in model defaults (not the tiny preset), which neither the help nor the run said."""
    text = _help(lambda: parse_args(["--help"]))
    assert (
        "or a YAML file with model: and train: sections; a file without model: trains the built-in model defaults, "
        "not a preset (default: <model>_tiny)" in text
    )
