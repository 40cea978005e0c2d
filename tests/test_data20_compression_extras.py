"""The packages that decompress .zst and .lz4 corpus files are installable as extras of ngpt_ds."""

from __future__ import annotations

import ast
from pathlib import Path

from ngpt_ds.data.sources import _DECOMPRESSORS


def _extras() -> dict[str, list[str]]:
    tree = ast.parse((Path(__file__).parents[1] / "setup.py").read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return ast.literal_eval(next(k.value for k in call.keywords if k.arg == "extras_require"))


def test_each_decompressor_package_is_an_extra_named_after_its_compression():
    """Fault: the README's own corpus example is 'web/*.jsonl.zst', and prepare refuses such files without the
    zstandard package, but setup.py declared it nowhere: no `pip install ngpt_ds[...]` brought it, so every node of
    a prepare.sbatch array needed a separate pip install. Before: no extra held zstandard or lz4. Now: the
    extras zstd and lz4, named as fsspec names the compressions (the names the refusal prints)."""
    extras = _extras()
    wanted = {name: package for name, package in _DECOMPRESSORS.values() if package}
    assert wanted == {"zstd": "zstandard", "lz4": "lz4"}
    assert {name: extras.get(name) for name in wanted} == {"zstd": ["zstandard>=0.19"], "lz4": ["lz4>=4.0"]}
