"""What the trainer's start-up imports, in fresh interpreters (no forked server: its imports are the point).

`launch/train.py --help` and a usage error imported torch first (ngpt_ds.cli.default_accelerator, then the preset
list through the ngpt_ds.model package): 1.7 s of CPU, 8-9 s of wall on a loaded machine, for a line of text. A
training start-up never needs transformers or datasets (ngpt_ds.hf and the lm-eval adapter import them when used)."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, cpu_env

PROBE = """
import json, runpy, sys
sys.argv = ["launch/train.py", *json.loads(sys.argv[1])]
try:
    runpy.run_path("launch/train.py", run_name="__main__")
except SystemExit as end:
    code = end.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules, "deepspeed": "deepspeed" in sys.modules}))
"""


@pytest.mark.parametrize(("argv", "code"), [(["--help"], 0), ([], 2), (["--max-steps", "0"], 2)])
def test_help_and_usage_errors_answer_without_importing_torch(argv, code):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv)], cwd=REPO, env=cpu_env(), capture_output=True, text=True
    )
    assert json.loads(proc.stdout.splitlines()[-1]) == {"code": code, "torch": False, "deepspeed": False}, proc.stderr
    if code == 2:
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr


def test_help_lists_every_preset():
    from ngpt_ds.cli.train import preset_names
    from ngpt_ds.model.config import preset_names as model_presets

    assert preset_names() == model_presets() and "ngpt_tiny" in preset_names()
    proc = subprocess.run(
        [sys.executable, "launch/train.py", "--help"], cwd=REPO, env=cpu_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0
    assert f"({', '.join(model_presets())})" in " ".join(proc.stdout.split())


def test_the_trainers_modules_import_neither_transformers_nor_datasets():
    modules = ("transformers", "datasets", "lm_eval", "accelerate")
    probe = (
        "import json, sys\n"
        "import ngpt_ds.cli.train, ngpt_ds.train.job, ngpt_ds.train.loop, ngpt_ds.train.builder  # noqa: F401\n"
        f"print(json.dumps([m for m in {modules!r} if m in sys.modules]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=cpu_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
