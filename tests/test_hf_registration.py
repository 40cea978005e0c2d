"""`import ngpt_ds` registers nGPT and the GPT baseline with transformers' Auto classes when transformers is
imported later (ngpt_ds/__init__.py). In a fresh interpreter, which imports transformers (~10 s, longer on a
loaded machine): the point is the order of the imports."""

import subprocess
import sys

from conftest import REPO, cpu_env

CHECK = """
import importlib.util, sys
import ngpt_ds
{before}
import transformers
from transformers import AutoConfig, AutoModelForCausalLM
for model_type in ("ngpt", "ngpt_gpt_baseline"):
    config = AutoConfig.for_model(model_type)
    print(model_type, type(config).__name__, AutoModelForCausalLM._model_mapping[type(config)].__name__)
"""


EXPECTED = ["ngpt NGPTConfig NGPTForCausalLM", "ngpt_gpt_baseline GPTBaselineConfig GPTBaselineForCausalLM"]


def registered(before: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", CHECK.format(before=before)],
        cwd=REPO,
        env=cpu_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


def test_a_probe_for_transformers_before_its_import_does_not_lose_the_registration():
    """Fault: the hook left sys.meta_path at the first lookup of "transformers", which need not be the
    import: `importlib.util.find_spec("transformers")`, the "is it installed?" probe of lm_eval
    (lm_eval/utils.py) and accelerate (is_transformers_available), consumed it, and the import after it
    registered nothing: AutoConfig.for_model("ngpt") raised "Unrecognized model identifier: ngpt". The hook
    now stays until transformers has been executed."""
    probe = "assert importlib.util.find_spec('transformers') is not None\nimportlib.util.find_spec('transformers')"
    assert registered(probe) == EXPECTED
