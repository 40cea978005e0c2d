"""A device_map that offloads weights to disk (`device_map="auto", max_memory=..., offload_folder=...`) leaves those
parameters on the meta device, and from_pretrained's checks of the loaded values skipped them.

Fault (found by hf34): a folder with a NaN, or with an nGPT matrix off the sphere, loaded without a word through
either class when its weights were offloaded, where the same folder is refused when loaded whole. The offloaded
values are now read from the weights file, one tensor at a time."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ngpt_ds.errors import NgptConfigError

QKV = "model.blocks.1.attn.qkv.weight"  # the last block's: offloaded first when memory runs short


def _edited(source, folder, edit):
    shutil.copytree(source, folder)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        metadata = f.metadata()
    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors", metadata=metadata)
    return folder


def _offloaded(cls, folder, tmp_path):
    return cls.from_pretrained(
        folder, device_map="auto", max_memory={"cpu": 20000}, offload_folder=str(tmp_path / "offload")
    )


def _nan(weights):
    weights[QKV][0, 0] = float("nan")


def _off_sphere(weights):
    weights[QKV] *= 1.5


@pytest.mark.parametrize("class_name", ["AutoModelForCausalLM", "AutoModel"])
@pytest.mark.parametrize(
    "edit, message",
    [(_nan, f"{QKV} hold NaN or infinite values"), (_off_sphere, "is not unit norm along its declared dim")],
)
def test_offloaded_weights_are_checked_as_loaded_ones(hf_saved, tmp_path, class_name, edit, message):
    """Old code: the folder loaded (DID NOT RAISE)."""
    import transformers

    import ngpt_ds  # noqa: F401

    cls = getattr(transformers, class_name)
    folder = _edited(hf_saved["ngpt"], tmp_path / "edited", edit)
    with pytest.raises(NgptConfigError, match=message):
        cls.from_pretrained(folder)  # loaded whole: refused, as before
    with pytest.raises(NgptConfigError, match=message):
        _offloaded(cls, folder, tmp_path)


def test_an_intact_offloaded_model_loads_and_gives_the_whole_models_outputs(hf_saved, tmp_path):
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401

    model = _offloaded(AutoModelForCausalLM, hf_saved["ngpt"], tmp_path)
    assert "disk" in set(model.hf_device_map.values())  # the case under test: some weights on disk
    whole = AutoModelForCausalLM.from_pretrained(hf_saved["ngpt"])
    tokens = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, whole(tokens).logits, rtol=0, atol=1e-6)
