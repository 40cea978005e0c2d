"""Fault (scale30): a universal conversion interrupted after DeepSpeed's ds_to_universal had extracted every
ZeRO fragment (its phase 1 of 3, about half its reads and writes) started again from the beginning: the rerun
removed the work folder and extracted everything again. The converter now seals a finished extraction
(ngpt_ds.train.reshape_fragments) and the next conversion of the same checkpoint goes on from merging it; what it
cannot vouch for is converted again. The end-to-end run (a rank SIGKILLed right after the seal) is in
tests/test_scale30_universal.py; here, what the seal vouches for.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch

from ngpt_ds.train import checkpoint, manifest, reshape_fragments


def model_states(path, names, shape=(4, 5)):
    """A model-states file naming each parameter's shape, as DeepSpeed writes param_shapes (one group)."""
    torch.save({"param_shapes": [OrderedDict((name, torch.Size(shape)) for name in names)]}, path)


@pytest.fixture
def extraction(tmp_path):
    """A checkpoint folder with a COMPLETE manifest, and a sealed extraction of it: for each of two 4 x 5
    parameters, its fp32 master and Adam moments as one data-parallel rank's flat fp32 fragment."""
    source = tmp_path / "checkpoints" / "step_00000003"
    source.mkdir(parents=True)
    model_states(source / "mp_rank_00_model_states.pt", ("a.weight", "b.weight"))
    manifest.write_manifest(source, manifest.build_manifest(source, 3))
    folder = tmp_path / "work" / "converted" / reshape_fragments.FRAGMENTS
    for name in ("a.weight", "b.weight"):
        (folder / name / "0").mkdir(parents=True)
        for state in reshape_fragments.STATES:
            torch.save(torch.zeros(20), folder / name / "0" / f"{state}.00")
    reshape_fragments.seal(folder, source)
    return source, folder


def fragment_bytes(folder):
    return sum(f.stat().st_size for f in folder.glob("*/0/*"))


def test_a_sealed_extraction_is_reused_only_as_it_was_sealed(extraction, tmp_path):
    source, folder = extraction
    assert reshape_fragments.reusable(folder, source)
    fragment = folder / "a.weight" / "0" / "fp32.00"
    sealed_bytes = fragment.read_bytes()

    fragment.write_bytes(sealed_bytes + b"x")  # resized
    assert not reshape_fragments.reusable(folder, source)
    fragment.write_bytes(sealed_bytes)
    assert reshape_fragments.reusable(folder, source)

    fragment.unlink()  # missing
    assert not reshape_fragments.reusable(folder, source)
    fragment.write_bytes(sealed_bytes)
    (folder / "a.weight" / "0" / "fp32.01").write_bytes(b"")  # added
    assert not reshape_fragments.reusable(folder, source)
    (folder / "a.weight" / "0" / "fp32.01").unlink()
    (folder / "a.weight" / "0" / "link.00").symlink_to(fragment)  # a link is never followed
    assert not reshape_fragments.reusable(folder, source)
    (folder / "a.weight" / "0" / "link.00").unlink()
    assert reshape_fragments.reusable(folder, source)

    # Another checkpoint (another COMPLETE), or a checkpoint of the same name saved anew, is not this one.
    other = tmp_path / "other" / "step_00000003"
    other.mkdir(parents=True)
    model_states(other / "mp_rank_00_model_states.pt", ("a.weight", "b.weight"), shape=(5, 4))
    manifest.write_manifest(other, manifest.build_manifest(other, 3))
    assert not reshape_fragments.reusable(folder, other)
    # Another DeepSpeed wrote it.
    seal = json.loads((folder / reshape_fragments.EXTRACTED).read_text())
    (folder / reshape_fragments.EXTRACTED).write_text(json.dumps({**seal, "deepspeed": "0.0.1"}))
    assert not reshape_fragments.reusable(folder, source)


def test_the_rerun_keeps_only_the_sealed_fragments_and_drops_an_unsealed_leftover(extraction, tmp_path):
    source, folder = extraction
    work = folder.parent.parent
    (work / "convert.log").write_text("earlier")
    (work / "converted" / "zero" / "a.weight").mkdir(parents=True)
    (work / "converted" / "zero" / "a.weight" / "fp32.pt").write_bytes(b"half")
    assert reshape_fragments.keep_for_rerun(work, source) == fragment_bytes(folder)
    assert sorted(p.name for p in work.iterdir()) == ["converted"]
    assert sorted(p.name for p in (work / "converted").iterdir()) == [reshape_fragments.FRAGMENTS]
    assert reshape_fragments.reusable(folder, source)
    (folder / reshape_fragments.EXTRACTED).unlink()  # an extraction killed before its seal
    assert reshape_fragments.keep_for_rerun(work, source) is None
    assert (folder / "a.weight").is_dir()  # left for the caller, which removes the whole folder


def test_the_space_check_counts_the_reused_fragments_as_already_written(extraction, tmp_path, monkeypatch):
    """Fault: the rerun's space check asked for twice the checkpoint's size as free, the fragments it reuses (on
    the disk already) not counted: a conversion that fitted was refused on its rerun for want of space."""
    from types import SimpleNamespace

    from ngpt_ds.train import reshape_convert

    source, folder = extraction
    size = checkpoint.checkpoint_bytes(source)
    assert size
    reshape = SimpleNamespace(
        source=source,
        current=SimpleNamespace(ranks=lambda: "data-parallel size 1"),
        saved=SimpleNamespace(describe=lambda: "data-parallel size 2"),
    )
    monkeypatch.setattr(reshape_convert, "_free_bytes", lambda _folder: 2 * size - 100)
    refused = reshape_convert._space_problem(reshape, folder.parent.parent)
    assert refused is not None and refused.startswith("not enough free space to convert step_00000003")
    assert reshape_convert._space_problem(reshape, folder.parent.parent, kept_bytes=100) is None
