"""Fault: ngpt-evaluate's parser (plain argparse) kept the last of an option given twice without a word:
`evaluate.py RUN --data data/web ... --data data/tiny` (a script's options, then the user's) evaluated on
data/tiny and printed its table, exit 0, as the run's. Before: exit 0 and the table of the last --data. Now: the
commands' shared parser refuses it in one usage line, exit 2, before the model is loaded."""

from __future__ import annotations

import pytest

from ngpt_ds.cli import evaluate


def test_data_given_twice_is_refused_before_the_model_loads(capsys, monkeypatch):
    monkeypatch.setattr(evaluate, "_evaluate", lambda args: pytest.fail("the evaluation ran"))
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["runs/x", "--data", "data/web", "--windows", "2", "--data", "data/tiny"])
    assert exit_info.value.code == 2
    assert capsys.readouterr() == (
        "",
        "error: --data given twice (data/web, then data/tiny); give it once; --help lists the options\n",
    )


def test_the_same_data_twice_passes():
    args = evaluate.parse_args(["runs/x", "--data", "data/web", "--data", "data/web"])
    assert args.data == "data/web"
