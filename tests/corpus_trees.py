"""Corpus folders written from a {relative path: text} dict, and how often datasets tries its split patterns on a
folder: shared by the tests that compare a folder's one walk with datasets' own answer (folder36, data37)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Each file of `files` (relative path: text) under `root`, its folders made; `root` back."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def jsonl(*texts: str) -> str:
    """JSON lines, one {"text": ...} record a text."""
    return "".join(json.dumps({"text": t}) + "\n" for t in texts)


@pytest.fixture
def patterns_tried(monkeypatch):
    """How often datasets tries its split patterns on a folder (get_data_patterns: 322 walks each)."""
    import datasets  # here: every test module imports this fixture through conftest

    calls: list[str] = []
    real = datasets.load.get_data_patterns

    def counted(base_path, *args, **kwargs):
        calls.append(str(base_path))
        return real(base_path, *args, **kwargs)

    monkeypatch.setattr(datasets.load, "get_data_patterns", counted)
    return calls
