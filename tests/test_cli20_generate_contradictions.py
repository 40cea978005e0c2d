"""ngpt-generate's sampling options that contradict each other, and its options given twice (cli20 review).

Fault: --greedy with --temperature 0.7, or greedy decoding (--greedy, --temperature 0) with --top-k or --top-p,
generated the greedy text without a word (--greedy won over the temperature, and top-k / top-p change no
argmax), so a user comparing sampling settings got the same text for each; an option given twice kept the
last (`--max-new-tokens 500 ... --max-new-tokens 3`). Before: exit 0 and the greedy text. Now: one usage
line naming both options and the fix, exit 2, before the model is loaded."""

from __future__ import annotations

import pytest

from ngpt_ds.cli.generate import parse_args


def _refused(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["runs/ngpt_tiny", "--prompt", "And God said", *argv])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    return err


def test_greedy_with_a_temperature_is_refused(capsys):
    assert _refused(capsys, "--greedy", "--temperature", "0.7") == (
        "error: --greedy and --temperature 0.7 both given: --greedy is --temperature 0; give one; "
        "--help lists the options\n"
    )


def test_greedy_with_top_k_or_top_p_is_refused(capsys):
    assert _refused(capsys, "--greedy", "--top-p", "0.9") == (
        "error: --top-p 0.9 with --greedy: greedy decoding always takes the most likely token, so it would change "
        "nothing; drop --greedy to sample (a temperature above 0), or drop --top-p; --help lists the options\n"
    )
    assert _refused(capsys, "--temperature", "0", "--top-k", "40", "--top-p", "0.5") == (
        "error: --top-k 40 and --top-p 0.5 with --temperature 0: greedy decoding always takes the most likely token, "
        "so they would change nothing; drop --temperature 0 to sample (a temperature above 0), or drop --top-k and "
        "--top-p; --help lists the options\n"
    )


def test_an_option_given_twice_is_refused(capsys):
    assert _refused(capsys, "--max-new-tokens", "500", "--max-new-tokens", "3") == (
        "error: --max-new-tokens given twice (500, then 3); give it once; --help lists the options\n"
    )


def test_consistent_options_pass_with_the_default_temperature():
    args = parse_args(["m", "--prompt", "x", "--top-k", "40", "--top-p", "0.9"])
    assert (args.temperature, args.top_k, args.top_p, args.greedy) == (0.8, 40, 0.9, False)
    args = parse_args(["m", "--prompt", "x", "--greedy", "--temperature", "0", "--top-k", "0", "--top-p", "1"])
    assert (args.temperature, args.greedy) == (0.0, True)
    assert parse_args(["m", "--prompt", "x", "--temperature", "1.5"]).temperature == 1.5


def test_an_unquoted_prompt_is_named_with_the_fix(capsys):
    """The words after the first of an unquoted prompt are left over: the usage line names the first and says to
    quote, not (ngpt-train's) 'this command takes options only'."""
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["runs/ngpt_tiny", "--prompt", "And", "God", "said"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: unexpected argument 'God': this command takes one MODEL and options; quote a value that holds "
        "spaces; --help lists the options\n"
    )
