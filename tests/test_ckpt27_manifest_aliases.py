"""A shared checkpoint that names one file many times is refused or hashed once (helper ckpt27, session 27).

Faults: `verify` hashed every name the manifest and the folder list, so one large file reached under many names was
read once per name. A manifest listing `x.pt` also as `./x.pt`, `x.pt/` or `./././x.pt` passed (every alias
named the same file, every alias matched), and a 16 MiB manifest holds over 100,000 of them: a 1 GiB file read
100,000 times, days of a rank reading before a resume starts. A folder of links (or hard links) to one file did
the same with real entries. A manifest naming a key twice took the last entry without a word. Now an entry must
be a name as the listing writes it (no '.', no empty part, no trailing '/'), a key listed twice is a damaged
manifest, and each file (device and inode) is hashed once however many names reach it."""

import json
import os

import pytest

from ngpt_ds.train import manifest
from ngpt_ds.train.manifest import COMPLETE, build_manifest, verify, write_manifest


def step_folder(tmp_path, files=None):
    folder = tmp_path / "step_00000004"
    folder.mkdir()
    for name, size in (files or {"model.pt": 3000, "config.yaml": 10}).items():
        (folder / name).write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    return folder


@pytest.mark.parametrize("alias", ["./model.pt", "model.pt/", "././model.pt", "sub//../model.pt", ".//model.pt"])
def test_a_manifest_naming_a_file_under_a_second_spelling_is_refused(tmp_path, alias):
    """Old code: verify passed (None), having hashed model.pt twice."""
    folder = step_folder(tmp_path)
    found = build_manifest(folder, 4)
    found["files"][alias] = dict(found["files"]["model.pt"])
    write_manifest(folder, found)
    assert verify(folder) == f"{folder / COMPLETE}: malformed manifest entry {alias!r}"
    assert manifest.checkpoint_bytes(folder) is None  # not 6010 bytes: the free-space estimate ignores it


def test_a_manifest_naming_a_key_twice_is_refused_naming_it(tmp_path):
    """Old code: json.loads kept the second entry, and verify passed."""
    folder = step_folder(tmp_path)
    found = build_manifest(folder, 4)
    text = json.dumps(found, indent=1)
    entry = json.dumps({"model.pt": found["files"]["model.pt"]})[1:-1]
    (folder / COMPLETE).write_text(text.replace('"files": {', '"files": {' + entry + ", ", 1))
    assert json.loads((folder / COMPLETE).read_text()) == found  # the same dict: the duplicate is invisible there
    assert verify(folder) == (
        f"{folder / COMPLETE} is damaged: it names 'model.pt' twice (a checkpoint manifest names each file once)"
    )


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_file_reached_under_many_names_is_hashed_once(tmp_path, monkeypatch, link):
    """Old code: 201 reads of the same 3000 bytes (_digest called once per name); now one."""
    folder = step_folder(tmp_path, {"model.pt": 3000})
    for i in range(200):
        alias = folder / f"copy_{i:03d}.pt"
        if link == "symlink":
            alias.symlink_to("model.pt")
        else:
            os.link(folder / "model.pt", alias)
    write_manifest(folder, build_manifest(folder, 4))
    calls = []
    digest = manifest._digest

    def counting(path):
        calls.append(path.name)
        return digest(path)

    monkeypatch.setattr(manifest, "_digest", counting)
    assert verify(folder) is None
    assert calls == ["copy_000.pt"]  # the first name in the listing's order
    (folder / "model.pt").write_bytes(b"y" * 3000)  # every name sees the change: the first fails
    calls.clear()
    assert (
        verify(folder)
        == f"{folder / 'copy_000.pt'} does not match its blake2b-128 digest in the COMPLETE manifest (corrupted)"
    )
    assert calls == ["copy_000.pt"]


def test_names_that_differ_by_content_are_each_hashed(tmp_path, monkeypatch):
    """Distinct files stay distinct: a manifest of 3 files hashes 3."""
    folder = step_folder(tmp_path, {"a.pt": 300, "b.pt": 300, "c.pt": 301})
    write_manifest(folder, build_manifest(folder, 4))
    calls = []
    digest = manifest._digest
    monkeypatch.setattr(manifest, "_digest", lambda path: calls.append(path.name) or digest(path))
    assert verify(folder) is None
    assert sorted(calls) == ["a.pt", "b.pt", "c.pt"]
