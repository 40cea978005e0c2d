"""from_pretrained on a folder with a single model.safetensors (no index): the file is checked like the shards an
index names (saved_weights.check_shards), before transformers opens it."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from fed_pipe import fed_pipe
from random_export import export_random_ngpt

from ngpt_ds.errors import NgptConfigError

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

TAIL = "a weights file must be a file of the folder itself (the files are damaged, altered or from another program)"


@pytest.fixture()
def single(tmp_path, tiny_dataset):
    """A real `--format hf` export (one model.safetensors, no index) and its weights as loaded."""
    from ngpt_ds.hf import NGPTForCausalLM

    folder, _ = export_random_ngpt(tmp_path, tiny_dataset / "tokenizer.model", "hf")
    assert not list(folder.glob("*.index*.json"))
    return folder, NGPTForCausalLM.from_pretrained(str(folder)).state_dict()


def test_a_single_weights_file_linking_outside_the_folder_is_refused(single, tmp_path):
    """Fault: model.safetensors a link to a file outside the folder: the old code followed it and loaded the weights
    from there (no error raised), where a shard an index names is refused the same way."""
    from ngpt_ds.hf import NGPTForCausalLM

    folder, state = single
    outside = tmp_path / "elsewhere" / "w.safetensors"
    outside.parent.mkdir()
    (folder / "model.safetensors").rename(outside)
    os.symlink(outside, folder / "model.safetensors")
    with pytest.raises(NgptConfigError) as caught:
        NGPTForCausalLM.from_pretrained(str(folder))
    assert str(caught.value) == (
        f"{folder}/model.safetensors is a link to {os.path.realpath(outside)}, outside the folder; {TAIL}"
    )
    # A link to a file of the folder itself loads as before.
    (folder / "model.safetensors").unlink()
    outside.rename(folder / "weights.safetensors")
    os.symlink("weights.safetensors", folder / "model.safetensors")
    loaded = NGPTForCausalLM.from_pretrained(str(folder)).state_dict()
    assert sorted(loaded) == sorted(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_a_single_weights_file_that_is_a_named_pipe_is_refused_unopened(single):
    """A named pipe as model.safetensors is refused by name, never opened (a pipe without a writer would hang)."""
    from ngpt_ds.hf import NGPTForCausalLM

    folder, _ = single
    (folder / "model.safetensors").unlink()
    with fed_pipe(folder / "model.safetensors"), pytest.raises(NgptConfigError) as caught:
        NGPTForCausalLM.from_pretrained(str(folder))
    assert str(caught.value) == (
        f"{folder}/model.safetensors is a named pipe, not a weights file; the files are damaged, altered or from "
        "another program"
    )


def test_a_hugging_face_cache_snapshot_may_link_its_single_weights_file_to_its_blobs(single, tmp_path):
    """The Hugging Face cache keeps a snapshot's model.safetensors as a link to ../../blobs/HASH: that loads; a link
    elsewhere in the repository's cache folder (outside its blobs) is refused."""
    from ngpt_ds.hf import NGPTForCausalLM

    folder, state = single
    repo = tmp_path / "models--someone--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    shutil.copytree(folder, snapshot)
    (snapshot / "model.safetensors").rename(repo / "blobs" / "f00d")
    os.symlink("../../blobs/f00d", snapshot / "model.safetensors")
    loaded = NGPTForCausalLM.from_pretrained(str(snapshot)).state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    (snapshot / "model.safetensors").unlink()
    (repo / "blobs" / "f00d").rename(repo / "f00d")
    os.symlink("../../f00d", snapshot / "model.safetensors")
    with pytest.raises(NgptConfigError) as caught:
        NGPTForCausalLM.from_pretrained(str(snapshot))
    assert str(caught.value) == (
        f"{snapshot}/model.safetensors is a link to {os.path.realpath(repo / 'f00d')}, outside the folder; {TAIL}"
    )


def test_the_export_refuses_a_single_weights_file_outside_the_folder_without_ngpt_ds(single, tmp_path):
    """The check runs in the copy of saved_weights.py every `--format hf` export carries (trust_remote_code)."""
    from without_ngpt_ds import load_without_ngpt_ds

    folder, _ = single
    outside = tmp_path / "elsewhere" / "w.safetensors"
    outside.parent.mkdir()
    (folder / "model.safetensors").rename(outside)
    os.symlink(outside, folder / "model.safetensors")
    proc = load_without_ngpt_ds(folder, cwd=tmp_path)
    assert proc.stdout.strip().endswith(
        f"{folder}/model.safetensors is a link to {os.path.realpath(outside)}, outside the folder; {TAIL}"
    ), (proc.stdout, proc.stderr[-2000:])
