"""The console scripts setup.py installs run without a checkout: each answers --help.

They are the launch/*.py commands (ngpt_ds/cli); `pip install -e .` registers them. Each runs
from a folder outside the repository and without PYTHONPATH, as a pip-installed user runs it.
"""

import sysconfig
from pathlib import Path

import pytest

from conftest import cpu_env, run

SCRIPTS = {  # console script -> a phrase of its --help
    "ngpt-prepare": "sentencepiece tokenizer",
    "ngpt-train": "Train nGPT or its GPT baseline with DeepSpeed",
    "ngpt-generate": "Generate text with a trained nGPT or GPT",
    "ngpt-evaluate": "Validation loss / perplexity",
    "ngpt-export": "Consolidate a DeepSpeed checkpoint",
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_help_runs_outside_the_checkout(name, tmp_path):
    script = Path(sysconfig.get_path("scripts")) / name
    assert script.is_file(), f"{script} is not installed: run `pip install -e .` after editing setup.py"
    env = cpu_env()
    env.pop("PYTHONPATH")
    proc = run([script, "--help"], cwd=tmp_path, env=env)
    assert proc.stdout.startswith(f"usage: {name} ")
    assert SCRIPTS[name] in " ".join(proc.stdout.split())
    assert "--log-level" in proc.stdout and "--log-all-ranks" in proc.stdout


def test_launch_scripts_are_thin_entry_points():
    """launch/*.py only call the package's command lines (argv is parsed in ngpt_ds/cli)."""
    repo = Path(__file__).resolve().parents[1]
    for name, module in (
        ("train", "train"),
        ("prepare_data", "prepare"),
        ("generate", "generate"),
        ("evaluate", "evaluate"),
        ("export", "export"),
    ):
        text = (repo / "launch" / f"{name}.py").read_text(encoding="utf-8")
        assert f"from ngpt_ds.cli.{module} import main" in text and "argparse" not in text, name
