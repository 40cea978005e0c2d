"""What `pip install .` installs for a user without a checkout: the files the package reads at run time
are in the wheel (built, like pip does from PyPI, from the source distribution), and every third-party
module ngpt_ds imports is a declared dependency or extra."""

import ast
import subprocess
import sys
import tarfile
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

from conftest import REPO

SOURCE = ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "ngpt_ds", "ds_configs")


def build_wheel_from_sdist(tmp_path: Path) -> zipfile.ZipFile:
    """sdist from a copy of the source (the checkout stays untouched), then the wheel from the unpacked sdist."""
    src = tmp_path / "src"
    src.mkdir()
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *SOURCE],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in filter(None, tracked.split("\0")):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((REPO / name).read_bytes())
    build = "from setuptools import build_meta as b; import sys; print(getattr(b, sys.argv[1])(sys.argv[2]))"
    sdist = subprocess.run(
        [sys.executable, "-c", build, "build_sdist", str(tmp_path / "dist")],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sdist.returncode == 0, sdist.stderr[-3000:]
    with tarfile.open(tmp_path / "dist" / sdist.stdout.split()[-1]) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    wheel = subprocess.run(
        [sys.executable, "-c", build, "build_wheel", str(tmp_path / "dist")],
        cwd=unpacked,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert wheel.returncode == 0, wheel.stderr[-3000:]
    return zipfile.ZipFile(tmp_path / "dist" / wheel.stdout.split()[-1])


def test_the_wheel_carries_the_deepspeed_configs_presets_and_py_typed(tmp_path):
    """Faults: ngpt_ds/train/ had no __init__.py, so find_packages left the whole trainer out of the wheel
    and a pip user's `ngpt-train --help` died with "ModuleNotFoundError: No module named 'ngpt_ds.train'".
    The wheel had no DeepSpeed JSON either (ds_configs/ is outside the package): setup.py's build_py now
    copies them in as ngpt_ds/ds_configs/ (MANIFEST.in puts them in the sdist). py.typed was missing, so
    mypy ignored the package's type hints in users' code."""
    wheel = build_wheel_from_sdist(tmp_path)
    names = set(wheel.namelist())
    # Every module is there, and nothing from outside the package but the configs.
    modules = {str(p.relative_to(REPO)) for p in (REPO / "ngpt_ds").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert not [n for n in names if not n.startswith(("ngpt_ds/", "ngpt_ds-"))]
    configs = sorted(p.name for p in (REPO / "ds_configs").glob("*.json"))
    assert configs and "zero2.json" in configs
    for name in configs:
        assert wheel.read(f"ngpt_ds/ds_configs/{name}") == (REPO / "ds_configs" / name).read_bytes(), name
    for preset in (REPO / "ngpt_ds/model/presets").glob("*.yaml"):
        assert f"ngpt_ds/model/presets/{preset.name}" in names
    assert "ngpt_ds/py.typed" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = wheel.read(entry_points).decode()
    for script in ("ngpt-train", "ngpt-prepare", "ngpt-generate", "ngpt-evaluate", "ngpt-export", "ngpt-lm-eval"):
        assert f"{script} = ngpt_ds." in scripts


def declared_requirements() -> set[str]:
    """The distribution names in setup.py's install_requires and every extra (read from its source)."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    keywords = {
        k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")
    }
    specs = keywords["install_requires"] + [r for extra in keywords["extras_require"].values() for r in extra]
    return {Requirement(spec).name.lower().replace("_", "-") for spec in specs}


def imported_top_level_modules() -> dict[str, str]:
    """Top-level module -> the first ngpt_ds file that imports it, leaving out imports under TYPE_CHECKING."""
    found: dict[str, str] = {}
    for path in sorted((REPO / "ngpt_ds").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = {
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for stmt in block.body
            for n in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def test_every_third_party_import_is_a_declared_dependency():
    """Fault: ngpt_ds imports filelock (data/default_corpus.py, on every run's default corpus), pydantic
    (train/ds_schema.py) and tokenizers (hf/tokenizer.py) without declaring them; they came only as
    dependencies of torch, DeepSpeed and transformers, so any of those dropping one broke ngpt_ds."""
    declared = declared_requirements()
    distributions = packages_distributions()
    undeclared = []
    for module, where in imported_top_level_modules().items():
        if module in sys.stdlib_module_names or module == "ngpt_ds":
            continue
        dists = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not dists & declared:
            undeclared.append(f"{module} ({where}; distribution {', '.join(sorted(dists))})")
    assert not undeclared, "imported but not in setup.py: " + "; ".join(undeclared)
