"""ngpt-train's options of one value given twice (cli20 review).

Fault: argparse keeps the last of an option given twice without a word. A job script that ends in
`"$@" --out runs/exp1` (or passes --deepspeed_config before "$@") silently overrode the user's own
--out runs/exp2: the run resumed and extended runs/exp1's checkpoints, and `--compile --no-compile`
trained without compiling. Before: `--out runs/exp2 --out runs/exp1` trained into runs/exp1, exit 0.
Now: one line at startup naming the option and both values, exit 2, before anything is imported or
written; the same value given twice still passes."""

from __future__ import annotations

import pytest

from ngpt_ds.cli.train import parse_args

DS = ["--deepspeed_config", "ds_configs/zero2.json"]


def _refused(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse_args([*DS, *argv])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    return err


def test_out_given_twice_is_refused_naming_both(capsys):
    assert _refused(capsys, "--out", "runs/exp2", "--out", "runs/exp1") == (
        "error: --out given twice (runs/exp2, then runs/exp1); give it once; --help lists the options\n"
    )
    assert _refused(capsys, "--out=runs/exp2", "--no-progress", "--out", "runs/exp1") == (
        "error: --out given twice (runs/exp2, then runs/exp1); give it once; --help lists the options\n"
    )


def test_other_options_given_twice_are_refused(capsys):
    assert _refused(capsys, "--max-steps", "50", "--max-steps", "100") == (
        "error: --max-steps given twice (50, then 100); give it once; --help lists the options\n"
    )
    assert _refused(capsys, "--deepspeed_config", "ds_configs/zero3.json") == (
        "error: --deepspeed_config given twice (ds_configs/zero2.json, then ds_configs/zero3.json); give it once; "
        "--help lists the options\n"
    )
    assert _refused(capsys, "--dry-run", "--dry-run", "8") == (
        "error: --dry-run given twice (0, then 8); give it once; --help lists the options\n"
    )


def test_a_switch_and_its_no_form_are_refused(capsys):
    assert _refused(capsys, "--compile", "--no-compile") == (
        "error: --compile and --no-compile both given; give one; --help lists the options\n"
    )


def test_the_same_value_twice_and_the_launchers_local_rank_pass():
    args = parse_args([*DS, "--out", "runs/a", "--no-compile", "--out", "runs/a", "--no-compile", "--local_rank=0"])
    assert (args.out, args.compile, args.local_rank) == ("runs/a", False, 0)
    args = parse_args([*DS, "--max-steps", "7", "--resume", "none"])
    assert (args.max_steps, args.resume, args.out) == (7, "none", None)


def test_values_that_mean_the_same_pass():
    """Fault: the check compared the text, so `--log-level info --log-level INFO` (one level: the option reads
    it upper-cased) and `--max-steps 10 --max-steps 010` were refused as options given twice with different
    values. Now each value is read as the option reads it before they are compared."""
    args = parse_args([*DS, "--log-level", "info", "--max-steps", "10", "--log-level", "INFO", "--max-steps", "010"])
    assert (args.log_level, args.max_steps) == ("INFO", 10)
