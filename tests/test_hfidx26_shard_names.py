"""An index that names shards outside the folder is refused by from_pretrained before anything is read.

Fault: transformers joins the names in a folder's model.safetensors.index.json (its weight_map's values) onto the
folder without a look, so an index naming "/abs/path/x.safetensors", "../other/x.safetensors" or a shard that is a
link to a file elsewhere made NGPTForCausalLM.from_pretrained(folder) read weights from outside the folder the user
named. ngpt_ds.model.saved_weights.check_shards refuses such a name first, naming the index and the entry; the
copy of it an export carries does the same without ngpt_ds installed.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from fed_pipe import fed_pipe
from random_export import export_random_ngpt
from without_ngpt_ds import load_without_ngpt_ds

from ngpt_ds.errors import NgptConfigError

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

SHARD = "model-00001-of-00002.safetensors"
TAIL = "a shard must be a file of the folder itself (the files are damaged, altered or from another program)"


@pytest.fixture()
def sharded(tmp_path, tiny_dataset):
    """A real export split the way save_pretrained shards: its weights in SHARD, an index naming SHARD for every
    tensor; returns (folder, sorted tensor names, the weights as loaded from the single-file export)."""
    from safetensors import safe_open

    from ngpt_ds.hf import NGPTForCausalLM

    folder, _ = export_random_ngpt(tmp_path, tiny_dataset / "tokenizer.model", "hf")
    state = NGPTForCausalLM.from_pretrained(str(folder)).state_dict()
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        names = sorted(f.keys())  # noqa: SIM118
    (folder / "model.safetensors").rename(folder / SHARD)
    _write_index(folder, {name: SHARD for name in names})
    return folder, names, state


def _write_index(folder, weight_map):
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _outside_copy(folder, where):
    """The folder's shard copied to `where` (outside the folder); the index's first tensor now names it."""
    where.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / SHARD, where)


def test_a_split_export_with_plain_shard_names_loads_the_same_weights(sharded):
    from ngpt_ds.hf import NGPTForCausalLM

    folder, _, state = sharded
    loaded = NGPTForCausalLM.from_pretrained(str(folder)).state_dict()
    assert sorted(loaded) == sorted(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.parametrize("form", ["absolute", "parent"])
def test_an_index_naming_a_shard_outside_the_folder_is_refused(sharded, tmp_path, form):
    """Fault: the old code loaded the tensor from the file outside the folder (no error raised)."""
    from ngpt_ds.hf import NGPTForCausalLM

    folder, names, _ = sharded
    outside = tmp_path / "other" / "x.safetensors"
    _outside_copy(folder, outside)
    name = str(outside) if form == "absolute" else "../other/x.safetensors"
    _write_index(folder, {**{n: SHARD for n in names}, names[0]: name})
    with pytest.raises(NgptConfigError) as caught:
        NGPTForCausalLM.from_pretrained(str(folder))
    assert str(caught.value) == (
        f"{folder}/model.safetensors.index.json: weight_map[{names[0]!r}] = {name!r} is not the name of a file in "
        f"the folder; {TAIL}"
    )


def test_a_shard_linking_outside_the_folder_is_refused_and_one_linking_inside_loads(sharded, tmp_path):
    """Fault: the old code followed the link and loaded the weights of the file outside (no error raised)."""
    from ngpt_ds.hf import NGPTForCausalLM

    folder, names, state = sharded
    outside = tmp_path / "other" / "x.safetensors"
    _outside_copy(folder, outside)
    os.symlink(outside, folder / "model-00002-of-00002.safetensors")
    _write_index(folder, {**{n: SHARD for n in names}, names[0]: "model-00002-of-00002.safetensors"})
    with pytest.raises(NgptConfigError) as caught:
        NGPTForCausalLM.from_pretrained(str(folder))
    assert str(caught.value) == (
        f"{folder}/model.safetensors.index.json: weight_map[{names[0]!r}] = 'model-00002-of-00002.safetensors' "
        f"is a link to {os.path.realpath(outside)}, outside the folder; {TAIL}"
    )
    # A link to a file of the folder itself is no escape: it loads as before.
    (folder / "model-00002-of-00002.safetensors").unlink()
    os.symlink(SHARD, folder / "model-00002-of-00002.safetensors")
    loaded = NGPTForCausalLM.from_pretrained(str(folder)).state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_an_index_that_is_a_named_pipe_is_refused_before_it_is_read(sharded):
    """check_shards reads the index itself, so a named pipe there is refused by name, never opened (transformers
    passes over an index that is no regular file: the old code named no model.safetensors in the folder)."""
    from ngpt_ds.hf import NGPTForCausalLM

    folder, _, _ = sharded
    index = folder / "model.safetensors.index.json"
    index.unlink()
    with fed_pipe(index), pytest.raises(NgptConfigError) as caught:
        NGPTForCausalLM.from_pretrained(str(folder))
    assert str(caught.value) == (
        f"{index} is a named pipe, not a weights file; the files are damaged, altered or from another program"
    )


def test_the_export_refuses_a_shard_outside_the_folder_without_ngpt_ds(sharded, tmp_path):
    """The check runs in the copy of saved_weights.py every `--format hf` export carries (trust_remote_code)."""
    folder, names, _ = sharded
    outside = tmp_path / "other" / "x.safetensors"
    _outside_copy(folder, outside)
    _write_index(folder, {**{n: SHARD for n in names}, names[0]: "../other/x.safetensors"})
    assert "def check_shards(" in (folder / "saved_weights.py").read_text(encoding="utf-8")
    proc = load_without_ngpt_ds(folder, cwd=tmp_path)
    assert proc.stdout.strip().endswith(
        f"{folder}/model.safetensors.index.json: weight_map[{names[0]!r}] = '../other/x.safetensors' is not the "
        f"name of a file in the folder; {TAIL}"
    ), (proc.stdout, proc.stderr[-2000:])


def test_a_hugging_face_cache_snapshot_may_link_its_shards_to_its_blobs(sharded, tmp_path):
    """The Hugging Face cache keeps a snapshot's files as links to ../../blobs: a folder
    models--OWNER--NAME/snapshots/REV may link into that blobs folder, no further."""
    from ngpt_ds.hf import NGPTForCausalLM

    folder, names, state = sharded
    repo = tmp_path / "models--someone--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    shutil.copytree(folder, snapshot)
    (snapshot / SHARD).rename(repo / "blobs" / "f00d")
    os.symlink("../../blobs/f00d", snapshot / SHARD)
    loaded = NGPTForCausalLM.from_pretrained(str(snapshot)).state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    (snapshot / SHARD).unlink()  # elsewhere in the repository's cache folder: outside its blobs
    (repo / "blobs" / "f00d").rename(repo / "f00d")
    os.symlink("../../f00d", snapshot / SHARD)
    with pytest.raises(NgptConfigError) as caught:
        NGPTForCausalLM.from_pretrained(str(snapshot))
    assert str(caught.value) == (
        f"{snapshot}/model.safetensors.index.json: weight_map[{names[0]!r}] = {SHARD!r} is a link to "
        f"{os.path.realpath(repo / 'f00d')}, outside the folder; {TAIL}"
    )
