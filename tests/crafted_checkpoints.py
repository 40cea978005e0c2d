"""Checkpoints as whoever can write them might leave them, for the tests of what a resume refuses or loads: a run
rewound to an earlier step, a file altered under a manifest rebuilt to match, and the losses of a resumed run against
the uninterrupted one."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ngpt_ds import safe_load
from ngpt_ds.train import manifest

from conftest import read_metrics


def rewound(run: Path, into: Path, keep: str, drop: str) -> Path:
    """A copy of the run folder `run` at `into` as it was at checkpoint `keep` (`drop`, a later step, removed, and
    DeepSpeed's `latest` pointing at `keep`); returns the copy's checkpoints folder."""
    shutil.copytree(run, into)
    shutil.rmtree(into / "checkpoints" / drop)
    (into / "checkpoints" / "latest").write_text(keep)
    return into / "checkpoints"


def reseal(folder: Path) -> None:
    """Rebuild `folder`'s manifest over its files as they are now, as whoever altered one would: it then verifies."""
    old = manifest.read_manifest(folder)
    assert old is not None
    manifest.write_manifest(folder, {**old, "files": manifest.build_manifest(folder, old["step"])["files"]})
    assert manifest.verify(folder) is None


def alter(path: Path, change: Callable[[Any], Any], folder: Path) -> None:
    """Load the torch file `path` (safe_load: DeepSpeed's loss scaler is on its list), let `change` alter it in place
    (what it returns is ignored), save it, and reseal the checkpoint `folder` that holds it."""
    saved = safe_load.load(path)
    change(saved)
    torch.save(saved, path)
    reseal(folder)


def assert_resumed_as(uninterrupted: Path, resumed: Path, steps: list[int]) -> None:
    """The resumed run folder logged `steps`, with the uninterrupted run's losses there within 1e-6."""
    want = {m["step"]: m["train/loss"] for m in read_metrics(uninterrupted)}
    got = {m["step"]: m["train/loss"] for m in read_metrics(resumed) if m["step"] >= steps[0]}
    assert sorted(got) == steps
    assert [got[s] for s in steps] == pytest.approx([want[s] for s in steps], abs=1e-6)
