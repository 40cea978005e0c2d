"""The stand-in PYTHON (and dpkg, g++) that tests/run.sh's and launch/setup.sh's tests run those scripts with:
it answers their questions and installs nothing. Imported as conftest is (pytest puts tests/ on sys.path)."""

import os
import subprocess
import sys

from conftest import REPO

STAND_IN_PYTHON = """#!{python}
# tests/run.sh's and launch/setup.sh's PYTHON: answers their questions, installs and tests nothing.
import os, sys
args = sys.argv[1:]
if args == ["-"]:
    code = sys.stdin.read()
    sys.exit(1 if "EXTERNALLY-MANAGED" in code else 0)  # not externally managed; no requirements
if args[:1] == ["-c"]:
    print("0.16.0" if "LOWEST" in args[1] else "2.13.0" if "__version__.split" in args[1] else "stand-in")
    sys.exit(0)
if args[:2] == ["-m", "venv"]:
    os.makedirs(os.path.join(args[2], "bin"))
    open(os.path.join(args[2], "pyvenv.cfg"), "w").close()
    os.symlink(__file__, os.path.join(args[2], "bin", "python"))
sys.exit(0)  # -m pip / ruff / mypy / pytest
"""


def stand_in_env(tmp_path, **env) -> dict[str, str]:
    """The environment of a run.sh or setup.sh with a stand-in PYTHON (and dpkg, g++) in tmp_path/bin."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(STAND_IN_PYTHON.format(python=sys.executable))
    for tool in ("dpkg", "g++"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    path = f"{bin_dir}:{os.environ['PATH']}"
    return {"PATH": path, "HOME": str(tmp_path), "PYTHON": str(bin_dir / "python"), **env}


def run_sh(tmp_path, *argv, script="tests/run.sh", **env):
    """bash tests/run.sh with a stand-in PYTHON (and dpkg, g++): only its venv logic runs for real."""
    full_env = stand_in_env(tmp_path, **env)
    return subprocess.run(["bash", REPO / script, *argv], env=full_env, capture_output=True, text=True, timeout=60)
