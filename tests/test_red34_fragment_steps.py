"""Fault: the `step` fragments of a universal conversion's sealed extraction (ngpt_ds.train.reshape_fragments: one
per parameter and data-parallel rank, the optimizer step count the merge writes as zero/<param>/step.pt) were not
checked against the source checkpoint's optimizer step. One rank's step fragment changed under a rebuilt seal was
reused at every rerun, and DeepSpeed's merge stopped each time with "AssertionError: All shards must have the same
step value" (its traceback in the converter's log); both ranks' changed alike were merged as the parameter's
step.pt, a step count the source never had. A source whose optimizer shards record two step counts stopped the
converter on the same AssertionError traceback.

Now a step fragment that does not hold the shards' count has the fragments extracted again, with one line saying
which file did not fit, and the conversion equals a clean one; a source of two counts is refused in one line naming
the shard (the converter exits 1, no traceback). Real 2-rank ZeRO-2 checkpoint, real converter."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_red32_universal_fragments import EXTRACT_ONLY  # the converter stopped after its extraction

from ngpt_ds import safe_load
from ngpt_ds.train import manifest, reshape_fragments

from conftest import cpu_env, tiny_ngpt, tiny_train, train_run, write_ds_config, write_yaml

STEPS = ["step.00", "step.01"]
SHARD_1 = "zero_pp_rank_1_mp_rank_00_optim_states.pt"


def _convert(source: Path, output: Path, script: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", script] if script else [sys.executable, "-m", "ngpt_ds.train.reshape"]
    return subprocess.run(
        command + [str(source), str(output)], capture_output=True, text=True, env=cpu_env(), timeout=300
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_dataset) -> Path:
    """Step 3 of a 2-rank ZeRO-2 fp32 run (Adam's step count 3 in both optimizer shards)."""
    root = tmp_path_factory.mktemp("red34_steps")
    config = write_yaml(root / "run.yaml", tiny_ngpt(), tiny_train(3, checkpoint_interval=3))
    ds = write_ds_config(root / "z2.json", stage=2, bf16=False, micro=2, accum=1)
    train_run(config, ds, tiny_dataset, root / "run", nproc=2)
    return root / "run" / "checkpoints" / "step_00000003"


@pytest.fixture(scope="module")
def clean(saved, tmp_path_factory) -> Path:
    """A conversion of the checkpoint from the beginning."""
    output = tmp_path_factory.mktemp("red34_clean") / "converted"
    proc = _convert(saved, output)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return output


def _extracted(saved: Path, folder: Path) -> tuple[Path, Path]:
    source = folder / "checkpoints" / saved.name
    shutil.copytree(saved, source)
    output = folder / "converted"
    proc = _convert(source, output, EXTRACT_ONLY)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert reshape_fragments.reusable(output / reshape_fragments.FRAGMENTS, source)
    return source, output


def _steps(output: Path) -> dict[str, float]:
    return {p.parent.name: float(safe_load.load(p)) for p in (output / "zero").glob("*/step.pt")}


def _same_files(output: Path, clean: Path) -> None:
    """Every parameter's merged files (zero/NAME/*.pt) equal the clean conversion's."""
    zero, want = output / "zero", clean / "zero"
    names = sorted(str(p.relative_to(want)) for p in want.glob("*/*.pt"))
    assert sorted(str(p.relative_to(zero)) for p in zero.glob("*/*.pt")) == names and len(names) > 60
    for name in names:
        a, b = safe_load.load(zero / name), safe_load.load(want / name)
        if isinstance(a, dict):
            assert sorted(a) == sorted(b) and torch.equal(a["param"], b["param"]), name
        else:
            assert torch.equal(a, b), name


@pytest.mark.parametrize("ranks", [("01",), ("00", "01")], ids=["one_rank", "both_ranks"])
def test_a_step_fragment_of_another_count_under_a_matching_seal_is_extracted_again(saved, clean, tmp_path, ranks):
    source, output = _extracted(saved, tmp_path)
    fragments = output / reshape_fragments.FRAGMENTS
    # a parameter cut between the two ranks: a step fragment of each
    param = next(d for d in sorted(fragments.iterdir()) if sorted(p.name for p in d.glob("0/step.*")) == STEPS)
    for rank in ranks:
        torch.save(torch.tensor(7.0), param / "0" / f"step.{rank}")
    reshape_fragments.seal(fragments, source)  # as whoever changed it would
    assert (fragments / reshape_fragments.EXTRACTED).is_file()
    proc = _convert(source, output)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    said = [line for line in proc.stdout.splitlines() if line.startswith("*** 1. Extracting again")]
    first = param / "0" / f"step.{ranks[0]}"
    assert said == [
        f"*** 1. Extracting again: the sealed fragments in {fragments} do not fit {source.name} ({first} holds "
        "optimizer step 7, where the checkpoint's optimizer shards are at 3)"
    ], proc.stdout[-3000:]
    assert "Reusing" not in proc.stdout
    assert set(_steps(output).values()) == {3.0} and len(_steps(output)) > 20
    _same_files(output, clean)


def test_a_source_whose_optimizer_shards_record_two_step_counts_is_refused_in_one_line(saved, tmp_path):
    source = tmp_path / "checkpoints" / saved.name
    shutil.copytree(saved, source)
    states = torch.load(source / SHARD_1, weights_only=False)
    for state in states["optimizer_state_dict"]["base_optimizer_state"]["state"].values():
        state["step"] = torch.tensor(7.0)
    torch.save(states, source / SHARD_1)
    manifest.write_manifest(source, manifest.build_manifest(source, 3))
    proc = _convert(source, tmp_path / "converted")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "AssertionError" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {source / SHARD_1}: parameter group 0 records optimizer step 7, "
        "zero_pp_rank_0_mp_rank_00_optim_states.pt records 3 (every shard of one optimizer holds the same count). "
        f"The checkpoint {source.name} was altered or damaged: resume from another checkpoint"
    ], proc.stderr[-3000:]
