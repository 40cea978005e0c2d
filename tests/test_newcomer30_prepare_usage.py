"""launch/prepare_data.py's usage errors, as the other commands': one line, the closest option, and an option given
twice refused (README "Training": "An option given twice with different values ... is refused at startup in every
command"). prepare_data.py parsed with argparse's own parser, alone of the commands."""

from __future__ import annotations

import pytest

from ngpt_ds.cli import add_logging_arguments
from ngpt_ds.cli.prepare import build_parser


def _usage_error(argv: list[str], capsys) -> str:
    parser = build_parser()
    add_logging_arguments(parser)
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err, err  # one line, not argparse's 13-line usage block
    return err.strip()


def test_prepare_refuses_an_output_folder_given_twice(capsys):
    """Fault: `prepare_data.py --out a ... --out b` (a script's `--out data/x "$@"`) prepared into b without a
    word; the old parser returned the arguments (pytest: 'DID NOT RAISE')."""
    assert _usage_error(["--input", "c.txt", "--out", "a", "--out", "b"], capsys) == (
        "error: --out given twice (a, then b); give it once; --help lists the options"
    )


def test_prepare_refuses_a_second_input_list_that_would_replace_the_first(capsys):
    """Fault: `--input a.txt b.txt --input c.txt` prepared c.txt alone: argparse's store of a list option keeps the
    last list, so the first two files were dropped without a word."""
    assert _usage_error(["--input", "a.txt", "b.txt", "--input", "c.txt", "--out", "d"], capsys) == (
        "error: --input given twice (a.txt b.txt, then c.txt); give it once, with every value after it: "
        "--input a.txt b.txt c.txt; --help lists the options"
    )
    parser = build_parser()  # the same list twice is harmless, as for the other options
    assert parser.parse_args(["--input", "a.txt", "--input", "a.txt"]).input == ["a.txt"]


def test_prepare_names_the_closest_option_to_a_mistyped_one(capsys):
    """Fault: '--vocab_size 10' got the usage block and 'unrecognized arguments: --vocab_size 10', no hint; and
    '--vocab 10' was taken as --vocab-size (an abbreviation the other commands refuse)."""
    assert _usage_error(["--vocab_size", "10"], capsys) == (
        "error: unrecognized option --vocab_size (did you mean --vocab-size?); --help lists the options"
    )
    assert _usage_error(["--vocab", "10"], capsys) == (
        "error: unrecognized option --vocab (did you mean --vocab-size?); --help lists the options"
    )


def test_prepare_help_shows_examples(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "examples:\n  ngpt-prepare   " in out
    assert "  ngpt-prepare --input 'data/*.jsonl' --out data/mycorpus " in out
