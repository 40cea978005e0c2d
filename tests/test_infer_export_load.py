"""Loading an ngpt_ds export (or a trainer checkpoint) whose config was edited to describe a far larger
model than its weights hold: refused from the weights' shapes, before the model is built."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_infer_export import trained  # noqa: F401  (session fixture)

from conftest import REPO, cpu_env


@pytest.fixture(scope="module")
def small_export(tmp_path_factory, tiny_dataset) -> Path:
    """A random tiny nGPT in the export layout (ngpt_ds.infer.export), without a training run."""
    from safetensors.torch import save_file

    from ngpt_ds.data.shards import sha256_file
    from ngpt_ds.data.tokenizer import Tokenizer
    from ngpt_ds.infer import LoadedModel
    from ngpt_ds.infer.export import _config_json
    from ngpt_ds.model import ModelConfig, build_model, max_norm_deviation

    folder = tmp_path_factory.mktemp("export_load") / "export"
    folder.mkdir()
    torch.manual_seed(0)
    config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    model = build_model(config).eval()
    tok = Tokenizer.load(tiny_dataset / "tokenizer.model")
    loaded = LoadedModel(
        model=model, config=config, tokenizer=tok, tokenizer_sha256=sha256_file(tok.path), source=folder, kind="export"
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    shutil.copyfile(tok.path, folder / "tokenizer.model")
    (folder / "config.json").write_text(json.dumps(_config_json(loaded, max_norm_deviation(model))))
    return folder


def _only_on_meta(build_model, built: list | None = None):
    """build_model that refuses to allocate the 8192-wide model: it may be described on the meta device only."""

    def guarded(model_config):
        on_meta = torch.empty(0).device.type == "meta"
        if built is not None:
            built.append((model_config.n_embd, on_meta))
        if model_config.n_embd == 8192 and not on_meta:
            raise AssertionError("the loader allocated the 150 GB model the config describes")
        return build_model(model_config)

    return guarded


def test_config_describing_a_huge_model_is_refused_before_building_it(small_export, tmp_path, monkeypatch):
    """Fault: load_export built the model config.json describes before looking at model.safetensors, so a
    config.json edited to an 8192-wide model (150 GB of fp32 at 48 layers) allocated it first: a traceback from
    the CPU allocator (or the OOM killer) instead of an error naming the file (2 GB allocations, 46 s,
    before failing under an 8 GB memory limit)."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import load, loading

    folder = tmp_path / "crafted"
    shutil.copytree(small_export, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model"].update(n_embd=8192, n_head=64)
    (folder / "config.json").write_text(json.dumps(config))

    built = []
    monkeypatch.setattr(loading, "build_model", _only_on_meta(loading.build_model, built))
    with pytest.raises(NgptConfigError) as err:
        load(folder, device="cpu")
    message = str(err.value)
    assert message.startswith(f"{folder / 'model.safetensors'}: the weights do not match the model config")
    assert "shape mismatch blocks.0.attn.out.weight (32, 32) vs config (8192, 8192)" in message
    assert built == [(8192, True)]
    assert len(load(small_export, device="cpu").model.blocks) == 2  # the intact export still loads


def _never_built(build_model, built: list):
    """build_model that records each model described and refuses to describe one of more than 1024 blocks."""

    def guarded(model_config):
        built.append(model_config.n_layer)
        if model_config.n_layer > 1024:
            raise AssertionError(f"the loader described a model of {model_config.n_layer} blocks")
        return build_model(model_config)

    return guarded


@pytest.mark.parametrize(
    "n_layer, message",
    [
        (10**9, "model.n_layer = 1000000000: is above the largest supported, 1024"),
        (
            1000,
            "model.safetensors: the weights hold 2 transformer blocks (blocks.0 to blocks.1), but the model config "
            "says n_layer 1000; the files are damaged, altered or from another model",
        ),
    ],
)
def test_config_saying_more_layers_than_the_file_holds_is_refused_before_describing_the_model(
    small_export, tmp_path, monkeypatch, n_layer, message
):
    """Fault (review): load_export described the model config.json gives on the meta device (~20 ms and 40 KB
    a block) before comparing it with model.safetensors, so "n_layer": 1000000000 grew memory until the OOM
    killer, and 1000 blocks took 20-80 s before the shapes were compared. Now the bound (1024) refuses the
    first, and the blocks the file's header names refuse the second, before any model is described."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import load, loading

    folder = tmp_path / "crafted"
    shutil.copytree(small_export, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["n_layer"] = n_layer
    (folder / "config.json").write_text(json.dumps(config))

    built: list = []
    monkeypatch.setattr(loading, "build_model", _never_built(loading.build_model, built))
    with pytest.raises(NgptConfigError) as err:
        load(folder, device="cpu")
    assert message in str(err.value)
    assert built == []


def test_checkpoint_config_describing_a_huge_model_is_refused_before_building_it(trained, tmp_path, monkeypatch):  # noqa: F811
    """Fault: load_checkpoint built the model its config.yaml describes before reading the DeepSpeed files,
    so a checkpoint whose config.yaml (and manifest) say 48 layers of width 8192 allocated 150 GB first,
    instead of reporting that the saved weights are another model's."""
    import yaml

    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import load, loading
    from ngpt_ds.train.manifest import build_manifest, write_manifest

    checkpoint = tmp_path / "run" / "checkpoints" / trained["checkpoint"].name
    shutil.copytree(trained["checkpoint"], checkpoint)
    run = yaml.safe_load((checkpoint / "config.yaml").read_text())
    run["model"].update(n_layer=48, n_embd=8192, n_head=64)
    (checkpoint / "config.yaml").write_text(yaml.safe_dump(run))
    write_manifest(checkpoint, build_manifest(checkpoint, 6))

    monkeypatch.setattr(loading, "build_model", _only_on_meta(loading.build_model))
    with pytest.raises(NgptConfigError) as err:
        load(checkpoint, device="cpu")
    message = str(err.value)
    assert message.startswith(f"{checkpoint}: the weights do not match the model config")
    assert "shape mismatch blocks.0.attn.out.weight (32, 32) vs config (8192, 8192)" in message
    assert len(load(trained["checkpoint"], device="cpu").model.blocks) == 2  # the intact one still loads


def test_checkpoint_config_saying_a_billion_layers_is_refused_before_describing_the_model(
    trained,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """Fault (review): a checkpoint whose config.yaml says "n_layer": 1000000000 made load_checkpoint describe
    that model on the meta device block by block (~20 ms and 40 KB each) until the OOM killer."""
    import yaml

    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import load, loading
    from ngpt_ds.train.manifest import build_manifest, write_manifest

    checkpoint = tmp_path / "run" / "checkpoints" / trained["checkpoint"].name
    shutil.copytree(trained["checkpoint"], checkpoint)
    run = yaml.safe_load((checkpoint / "config.yaml").read_text())
    run["model"]["n_layer"] = 10**9
    (checkpoint / "config.yaml").write_text(yaml.safe_dump(run))
    write_manifest(checkpoint, build_manifest(checkpoint, 6))

    built: list = []
    monkeypatch.setattr(loading, "build_model", _never_built(loading.build_model, built))
    with pytest.raises(NgptConfigError) as err:
        load(checkpoint, device="cpu")
    assert str(err.value).startswith(f"model config ({checkpoint / 'config.yaml'}): 1 problem")
    assert "model.n_layer = 1000000000: is above the largest supported, 1024" in str(err.value)
    assert built == []


def test_a_named_pipe_for_the_weights_is_refused_not_waited_on(small_export, tmp_path):
    """Fault (crafted-file audit): an export whose model.safetensors is a named pipe made `generate.py EXPORT`
    wait forever in safe_open (killed after 90 s). Now one line, exit 2."""
    folder = tmp_path / "export"
    shutil.copytree(small_export, folder)
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")
    proc = subprocess.run(
        [sys.executable, REPO / "launch/generate.py", folder, "--prompt", "The", "--max-new-tokens", "2"],
        capture_output=True, text=True, env=cpu_env(), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{folder / 'model.safetensors'} is not a regular file; export the checkpoint again" in proc.stderr


def _hub_cache_layout(export: Path, root: Path) -> Path:
    """`export` as the Hugging Face Hub cache stores a download: blobs/<sha256> holding the files, and
    snapshots/<revision>/<name> relative symbolic links to them. Returns the snapshot folder."""
    from ngpt_ds.data.shards import sha256_file

    snapshot = root / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir()
    for file in sorted(export.iterdir()):
        blob = root / "blobs" / sha256_file(file)
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    return snapshot


def test_an_export_of_symbolic_links_to_files_outside_its_folder_loads(small_export, tmp_path):
    """Fault (review): an export whose files are symbolic links (the Hugging Face Hub cache's
    snapshots/REV/tokenizer.model -> ../../blobs/HASH, DVC, git-annex, `cp -rs`) was refused: the tokenizer's
    path was resolved and then required inside the folder ("tokenizer.file = 'tokenizer.model' must name a file
    inside the export folder ...; export the checkpoint again"), which exporting again cannot change."""
    from ngpt_ds.infer import load

    snapshot = _hub_cache_layout(small_export, tmp_path / "hub")
    assert (snapshot / "tokenizer.model").is_symlink()
    assert (snapshot / "tokenizer.model").resolve().parent == tmp_path / "hub" / "blobs"
    loaded = load(snapshot, device="cpu")
    intact = load(small_export, device="cpu")
    assert loaded.tokenizer_sha256 == intact.tokenizer_sha256
    assert loaded.tokenizer.encode("The model") == intact.tokenizer.encode("The model")
    for name, tensor in intact.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name


@pytest.mark.parametrize("name", ["../escaped.model", "sub/tokenizer.model", "/tmp/tokenizer.model", "..", ""])
def test_a_tokenizer_file_named_with_a_folder_is_refused(small_export, tmp_path, name):
    """tokenizer.file in config.json must be a plain file name: a path leading out of the folder (or into a
    sub-folder) is refused by its name, before any file is read."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import load

    folder = tmp_path / "export"
    shutil.copytree(small_export, folder)
    shutil.copyfile(small_export / "tokenizer.model", tmp_path / "escaped.model")  # the right tokenizer, outside
    config = json.loads((folder / "config.json").read_text())
    config["tokenizer"]["file"] = name
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(NgptConfigError) as err:
        load(folder, device="cpu")
    assert str(err.value) == (
        f"{folder / 'config.json'}: tokenizer.file = {name!r} must name a file inside the export folder (normally "
        "'tokenizer.model'): a plain file name, without a folder; export the checkpoint again"
    )


@pytest.mark.parametrize(
    "dtype, shown",
    [
        (torch.float8_e4m3fn, "F8_E4M3"),
        (torch.float8_e5m2, "F8_E5M2"),
        (torch.int8, "I8"),
        (torch.bool, "BOOL"),
        (torch.complex64, "C64"),
    ],
)
def test_a_weight_of_a_dtype_that_is_no_float_is_refused_naming_it(small_export, tmp_path, dtype, shown):
    """Fault (review): an export's weights' dtype was never checked: a float8 tensor ended in a traceback
    (NotImplementedError: "isfinite" not implemented for 'Float8_e4m3fn'), and int8, bool or complex64 ones
    were cast to float32 and loaded without a word (complex dropping its imaginary part)."""
    from safetensors.torch import load_file, save_file

    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import load

    folder = tmp_path / "export"
    shutil.copytree(small_export, folder)
    weights = load_file(str(folder / "model.safetensors"))
    weights["blocks.1.mlp.down.weight"] = weights["blocks.1.mlp.down.weight"].to(dtype)
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(NgptConfigError) as err:
        load(folder, device="cpu")
    assert str(err.value) == (
        f"{folder / 'model.safetensors'}: blocks.1.mlp.down.weight ({shown}): weights must be float32, float64, "
        "bfloat16 or float16; the files are damaged, altered or from another program"
    )


def test_check_weights_refuses_a_weight_that_is_no_float_naming_it():
    """The same check on the weights a checkpoint gives (check_weights, under every loader)."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer.loading import check_weights

    weights = {"a.weight": torch.zeros(2, 2), "b.weight": torch.zeros(2, dtype=torch.int8)}
    with pytest.raises(NgptConfigError) as err:
        check_weights({"a.weight": (2, 2), "b.weight": (2,)}, weights, "step_00000004")
    assert str(err.value) == (
        "step_00000004: b.weight (int8): weights must be float32, float64, bfloat16 or float16; the files are "
        "damaged, altered or from another program"
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_weights_in_float16_bfloat16_or_float64_still_load(small_export, tmp_path, dtype):
    from safetensors.torch import load_file, save_file

    from ngpt_ds.infer import load

    folder = tmp_path / "export"
    shutil.copytree(small_export, folder)
    weights = load_file(str(folder / "model.safetensors"))
    weights["blocks.1.mlp.down.weight"] = weights["blocks.1.mlp.down.weight"].to(dtype)
    save_file(weights, str(folder / "model.safetensors"))
    loaded = load(folder, device="cpu")
    expected = weights["blocks.1.mlp.down.weight"].float()
    assert torch.equal(loaded.model.state_dict()["blocks.1.mlp.down.weight"], expected)
