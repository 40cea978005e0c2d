"""Load an exported folder as a user without ngpt_ds would: transformers, trust_remote_code, and the modeling
code the folder carries. A meta-path finder makes every `ngpt_ds` import fail, so a copy of the code that still
reached for the package fails the test instead of quietly importing the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import run

NOT_INSTALLED = """\
import sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name == "ngpt_ds" or name.startswith("ngpt_ds."):
            raise ModuleNotFoundError("No module named " + repr(name))
sys.meta_path.insert(0, NotInstalled())
"""
"""The start of a script that runs as if ngpt_ds were not installed: every import of it fails."""

_SCRIPT = (
    NOT_INSTALLED
    + """\
from transformers import AutoModelForCausalLM
try:
    AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
except Exception as err:
    print(type(err).__name__, err)
"""
)


def load_without_ngpt_ds(folder: Path, cwd: Path) -> subprocess.CompletedProcess:
    """from_pretrained(folder, trust_remote_code=True) in a fresh Python that cannot import ngpt_ds; an
    exception it raises is printed to stdout as `TypeName message`."""
    return run([sys.executable, "-c", _SCRIPT, folder], cwd=cwd, env={**os.environ, "PYTHONPATH": ""})
