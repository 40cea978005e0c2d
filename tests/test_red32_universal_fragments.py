"""Fault: an interrupted universal conversion's fragments (ngpt_ds.train.reshape_fragments) were reused whenever
their seal (EXTRACTED) matched the files' names and sizes, and whoever can write the work folder can write such a
seal. A fragment deleted was merged without a word: the converted checkpoint lacked that parameter's Adam moment
(zero/blocks.0.attn.qkv.weight/exp_avg.pt absent, exit 0); one of another dtype was merged as it was; one
lengthened, or not a tensor, stopped the merge with DeepSpeed's traceback ("RuntimeError: shape '[96, 32]' is
invalid for input of size 3077") at every rerun, since the same fragments were reused each time.

Reuse now also needs the fragments to fit the checkpoint (each state a flat fp32 tensor per data-parallel rank,
the same ranks for each state, adding up to the parameter's size in the model states); anything else is extracted
again, and the conversion equals a clean one. A fragment whose pickle would run code is refused by the restricted
load (tested against torch's unrestricted load, which runs it) and is never merged."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ngpt_ds.train import reshape_fragments

from conftest import cpu_env

SOURCE = "checkpoints/step_00000010"
EXTRACT_ONLY = (
    "import sys\n"
    "from deepspeed.checkpoint import ds_to_universal as u\n"
    "from ngpt_ds.train import reshape_convert\n"
    "def stop(*args, **kwargs):\n"
    "    raise SystemExit(3)\n"
    "u._merge_tp_slice_files = stop\n"
    "reshape_convert.run_child(sys.argv[1:])\n"
)


def _run(args: list[str], script: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", script] if script else [sys.executable, "-m", "ngpt_ds.train.reshape"]
    return subprocess.run(command + args, capture_output=True, text=True, env=cpu_env(), timeout=300)


def extracted(reference_runs, folder: Path) -> tuple[Path, Path]:
    """(source, output): a copy of the 2-rank ZeRO-2 run's step 10 and a conversion of it stopped after its
    sealed extraction, as a preemption leaves it."""
    source = folder / "checkpoints" / "step_00000010"
    shutil.copytree(reference_runs["z2_ws2"] / SOURCE, source)
    output = folder / "converted"
    proc = _run([str(source), str(output)], EXTRACT_ONLY)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert reshape_fragments.reusable(output / reshape_fragments.FRAGMENTS, source)
    return source, output


class Runs:
    """A pickle that creates a folder when it is loaded without the restriction."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _merged(output: Path) -> dict[str, object]:
    zero = output / "zero"
    """Each parameter's merged states (zero/NAME/*.pt), the files its fragments make."""
    return {
        str(p.relative_to(zero)): torch.load(p, weights_only=False)
        for p in sorted(zero.rglob("*.pt"))
        if p.parent != zero
    }


def _same(a: object, b: object, key: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), key
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), key
        for k in a:
            _same(a[k], b[k], f"{key}/{k}")
    else:
        assert a == b, key


@pytest.fixture(scope="module")
def clean(reference_runs, tmp_path_factory) -> dict[str, object]:
    """The merged files of a conversion of the run's step 10 from the beginning."""
    folder = tmp_path_factory.mktemp("clean")
    source = folder / "step_00000010"
    shutil.copytree(reference_runs["z2_ws2"] / SOURCE, source)
    proc = _run([str(source), str(folder / "converted")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = _merged(folder / "converted")
    assert "blocks.0.attn.qkv.weight/exp_avg.pt" in merged and len(merged) > 60
    return merged


TARGET = "blocks.0.attn.qkv.weight/0/exp_avg.00"


def _craft(kind: str, target: Path, folder: Path) -> None:
    if kind == "code":
        torch.save(Runs(folder / "ran"), target)
    elif kind == "missing":
        target.unlink()
    elif kind == "longer":
        torch.save(torch.cat([torch.load(target), torch.zeros(5)]), target)
    elif kind == "int64":
        torch.save(torch.load(target).to(torch.int64), target)
    elif kind == "not_a_tensor":
        torch.save({"exp_avg": 1}, target)


def test_sealed_fragments_that_fit_are_still_reused(reference_runs, tmp_path, clean):
    source, output = extracted(reference_runs, tmp_path)
    proc = _run([str(source), str(output)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "*** 1. Reusing the ZeRO fragments" in proc.stdout
    _same(_merged(output), clean)


@pytest.mark.parametrize("kind", ["missing", "longer", "int64", "not_a_tensor", "code"])
def test_a_crafted_fragment_under_a_matching_seal_is_extracted_again(reference_runs, tmp_path, clean, kind):
    source, output = extracted(reference_runs, tmp_path)
    fragments = output / reshape_fragments.FRAGMENTS
    _craft(kind, fragments / TARGET, tmp_path)
    reshape_fragments.seal(fragments, source)  # as whoever crafted it would
    assert (fragments / reshape_fragments.EXTRACTED).is_file()
    proc = _run([str(source), str(output)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Reusing" not in proc.stdout
    _same(_merged(output), clean)
    assert not (tmp_path / "ran").exists()


def test_the_code_fragment_runs_code_unrestricted_and_is_refused_by_the_restricted_load(tmp_path):
    from ngpt_ds import safe_load

    fragment = tmp_path / "exp_avg.00"
    torch.save(Runs(tmp_path / "ran"), fragment)
    with pytest.raises(safe_load.UnsafeCheckpointError, match="loading it needs posix.mkdir"):
        safe_load.load(fragment)
    assert not (tmp_path / "ran").exists()
    torch.load(fragment, weights_only=False)  # what DeepSpeed's merge calls, unguarded
    assert (tmp_path / "ran").is_dir()
