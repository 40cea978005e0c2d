"""from_pretrained of a folder whose weights are a pickled pytorch_model.bin instead of model.safetensors
(transformers still loads one, with torch.load's weights_only): the same checks as for safetensors."""

import shutil
from pathlib import Path

import pytest
import torch
from without_ngpt_ds import load_without_ngpt_ds

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")


def _as_bin(hf_saved: dict[str, Path], tmp_path: Path, arch: str, change) -> tuple[Path, dict[str, torch.Tensor]]:
    """A copy of the saved folder whose weights (changed by `change`) are in pytorch_model.bin alone."""
    from safetensors.torch import load_file

    folder = tmp_path / f"{arch}_bin"
    shutil.copytree(hf_saved[arch], folder)
    state = change(load_file(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return folder, state


def _int8_norm(state: dict) -> dict:
    return {**state, "model.final_norm.weight": state["model.final_norm.weight"].to(torch.int8)}


def test_a_bin_of_int8_weights_is_refused_naming_the_file_and_the_tensor(hf_saved, tmp_path):
    """Fault: the dtype check read only safetensors headers, so a GPT folder whose weights are a
    pytorch_model.bin with an int8 tensor loaded without a word (the tensor cast to float: its fractions lost),
    as the check was made to refuse in a model.safetensors."""
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401
    from ngpt_ds.errors import NgptConfigError

    folder, _ = _as_bin(hf_saved, tmp_path, "gpt", _int8_norm)
    with pytest.raises(NgptConfigError) as err:
        AutoModelForCausalLM.from_pretrained(folder)
    assert str(err.value) == (
        f"{folder}/pytorch_model.bin: model.final_norm.weight (int8): weights must be float32, float64, bfloat16 "
        "or float16; the files are damaged, altered or from another program"
    )


def test_an_ngpt_bin_saved_in_float16_loads_in_float32_and_one_off_the_sphere_is_named(hf_saved, tmp_path):
    """Fault: the unit-norm tolerance allowed for the stored dtype only when read from safetensors headers: an
    nGPT whose pytorch_model.bin holds float16 weights was refused as 'not unit norm (0.000243 > 0.0001)', and
    the message named '<folder> (its model.safetensors)', a file the folder does not have."""
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401
    from ngpt_ds.errors import NgptConfigError

    folder, state = _as_bin(hf_saved, tmp_path, "ngpt", lambda s: {k: v.half() for k, v in s.items()})
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert next(model.parameters()).dtype == torch.float32
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name].float()), name

    state["model.blocks.0.attn.qkv.weight"] *= 1.01  # off the sphere by ~0.01, beyond float16's 2e-3
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(NgptConfigError) as err:
        AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert str(err.value).startswith(
        f"{folder}/pytorch_model.bin: an nGPT weight matrix is not unit norm along its declared dim (largest "
        "| ||w|| - 1 | = 0.0102 > 0.002)"
    )


def test_an_export_without_ngpt_ds_refuses_a_bin_of_int8_weights(hf_saved, tmp_path):
    """The same fault in the copy of the modeling code a folder carries (trust_remote_code, no ngpt_ds)."""
    folder, _ = _as_bin(hf_saved, tmp_path, "gpt", _int8_norm)
    assert (folder / "saved_weights.py").is_file()
    proc = load_without_ngpt_ds(folder, cwd=tmp_path)
    assert proc.stdout.strip().endswith(
        f"{folder}/pytorch_model.bin: model.final_norm.weight (int8): weights must be float32, float64, bfloat16 "
        "or float16; the files are damaged, altered or from another program"
    ), (proc.stdout, proc.stderr[-2000:])
