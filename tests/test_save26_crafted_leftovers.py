"""Crafted leftovers in checkpoints/ against the start-up repair of interrupted saves
(ngpt_ds.train.checkpoint_interrupted, helper save26): a sealed step_N.tmp-save whose manifest is crafted (a file
named with '..', an absolute path or a NUL, a huge size, a step that is not N, a bool or a float) is never put in
place and never deleted, and nothing raises; a step_N.tmp-save or step_N.tmp-replaced that is a link to a folder
outside the run is left as it is, and what it names is neither read into place nor changed."""

import json
import os

import pytest

from ngpt_ds.train import checkpoint_interrupted, manifest

CRAFTED = {
    "dotdot": {"files": {"../../outside": {"size": 1, "blake2b": "0" * 32}}},
    "absolute": {"files": {"/etc/hostname": {"size": 1, "blake2b": "0" * 32}}},
    "nul": {"files": {"a\u0000b": {"size": 1, "blake2b": "0" * 32}}},
    "huge_size": {"files": {"w": {"size": 10**300, "blake2b": "0" * 32}}},
    "a_folder": {"files": {"sub": {"size": 0, "blake2b": "0" * 32}}},
    "other_step": {"step": 2},
    "bool_step": {"step": True},
    "float_step": {"step": 4.0},
}


def _sealed_with(tmp_path, patch):
    checkpoints = tmp_path / "run" / "checkpoints"
    older = checkpoints / "step_00000002"
    older.mkdir(parents=True)
    (older / "w").write_bytes(b"1")
    manifest.write_manifest(older, manifest.build_manifest(older, 2))
    sealed = checkpoints / "step_00000004.tmp-save"
    (sealed / "sub").mkdir(parents=True)
    (sealed / "w").write_bytes(b"2")
    record = manifest.build_manifest(sealed, 4) | patch
    (sealed / "COMPLETE").write_text(json.dumps(record))
    return checkpoints, (sealed / "COMPLETE").read_bytes()


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_sealed_save_is_kept_aside_never_put_in_place(tmp_path, case):
    checkpoints, marker = _sealed_with(tmp_path, CRAFTED[case])
    assert checkpoint_interrupted.finished_saves(checkpoints) == []
    (line,) = checkpoint_interrupted.recover_interrupted_saves(checkpoints)
    assert "was not put in place" in line and "not deleted" in line, line
    names = sorted(p.name for p in checkpoints.iterdir())
    assert names[:2] == ["latest", "step_00000002"] and len(names) == 3
    assert names[2].startswith("step_00000004.interrupted-save-")
    assert (checkpoints / names[2] / "COMPLETE").read_bytes() == marker  # kept whole
    assert (checkpoints / "latest").read_text() == "step_00000002"


def test_leftover_names_that_link_outside_are_left_alone(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w").write_bytes(b"S")
    manifest.write_manifest(outside, manifest.build_manifest(outside, 4))
    before = {p.name: p.read_bytes() for p in outside.iterdir()}
    os.symlink(outside, checkpoints / "step_00000004.tmp-save")
    os.symlink(outside, checkpoints / "step_00000004.tmp-replaced")
    assert checkpoint_interrupted.recover_interrupted_saves(checkpoints) == []
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000004.tmp-replaced", "step_00000004.tmp-save"]
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before
