"""ngpt-train's usage errors: one line on stderr naming the mistake (the closest real option for a mistyped one),
exit 2 (README "exit codes"), before any rank loads a model or reads data."""

import subprocess
import sys

import pytest

from ngpt_ds.cli.train import parse_args

from conftest import REPO, cpu_env

JSON = ["--deepspeed_config", "ds_configs/zero2.json"]


def usage_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        parse_args(list(argv))
    captured = capsys.readouterr()
    assert stopped.value.code == 2 and captured.out == "", captured
    return captured.err


@pytest.mark.parametrize(
    "argv, line",
    [
        (
            ["--deepspeed-config", "ds_configs/zero2.json"],
            "unrecognized option --deepspeed-config (did you mean --deepspeed_config?)",
        ),
        ([*JSON, "--confg", "ngpt_tiny"], "unrecognized option --confg (did you mean --config?)"),
        (
            [*JSON, "--max-step=5", "--lgo-level", "INFO"],
            "unrecognized options --max-step (did you mean --max-steps?), --lgo-level (did you mean --log-level?)",
        ),
        ([*JSON, "--xyzzy"], "unrecognized option --xyzzy"),
        (
            [*JSON, "ngpt_tiny"],
            "unexpected argument 'ngpt_tiny': this command takes options only (e.g. --config ngpt_tiny)",
        ),
        ([], "--deepspeed_config is required, e.g. --deepspeed_config ds_configs/zero2.json"),
        ([*JSON, "--max-steps", "-5"], "argument --max-steps: '-5': must be at least 1"),
        ([*JSON, "--max-steps", "ten"], "argument --max-steps: 'ten' is not a whole number of steps"),
    ],
    ids=[
        "dashed-deepspeed-config",
        "confg",
        "two-typos",
        "no-close-match",
        "stray-word",
        "no-json",
        "negative-steps",
        "steps-not-a-number",
    ],
)
def test_a_usage_error_is_one_line_naming_the_fix(capsys, argv, line):
    """Fault: argparse printed its 6-line usage block above 'train.py: error: unrecognized arguments:
    --deepspeed-config ds_configs/zero2.json', with no hint of the real spelling; --max-steps -5 reached the
    YAML check, which also blamed the preset's warmup_steps ('train.warmup_steps = 0: must not exceed
    max_steps = -5')."""
    assert usage_error(capsys, *argv) == f"error: {line}; --help lists the options\n"


def test_help_says_the_json_is_required_and_where_the_shipped_ones_are(capsys):
    """Fault: DeepSpeed's help for --deepspeed_config read 'DeepSpeed json configuration file.', and --help listed
    --deepspeed, --deepscale and --deepscale_config, which ngpt_ds never reads."""
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--help"])
    assert stopped.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--deepspeed_config JSON required: the DeepSpeed JSON" in text
    assert "ds_configs/: zero0.json ... zero3.json, zero2_offload.json" in text
    assert "--deepscale" not in text and "[--deepspeed]" not in text
    assert "(overrides train.max_steps; the tiny presets: 300)" in text


def test_the_launch_script_answers_a_mistyped_option_in_one_line():
    """As a newcomer runs it: plain python, no launcher, the dashed spelling."""
    proc = subprocess.run(
        [sys.executable, "launch/train.py", "--deepspeed-config", "ds_configs/zero2.json"],
        cwd=REPO,
        env=cpu_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        "error: unrecognized option --deepspeed-config (did you mean --deepspeed_config?); --help lists the options\n"
    )
