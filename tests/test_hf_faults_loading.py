"""from_pretrained of a crafted or damaged folder: refused before use, with an error naming the file read
and what is wrong in it, as ngpt_ds's own loader (ngpt_ds.infer.loading) refuses an export."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from without_ngpt_ds import load_without_ngpt_ds

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")


def _with_config(hf_saved: dict[str, Path], tmp_path: Path, arch: str, **fields) -> Path:
    folder = tmp_path / f"crafted_{arch}"
    shutil.copytree(hf_saved[arch], folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(fields)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("value", [None, 0])
def test_a_config_json_without_a_positive_vocab_size_is_refused_naming_it(hf_saved, tmp_path, value):
    """Fault: "vocab_size": null in config.json gave "ModelConfig.vocab_size must be resolved (from the
    dataset) before building a model", naming no file, with advice for a training config (a model has no
    dataset); "vocab_size": 0 was named, but with the advice to write null."""
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401  (registers model_type "ngpt")
    from ngpt_ds.errors import NgptConfigError

    folder = _with_config(hf_saved, tmp_path, "ngpt", vocab_size=value)
    with pytest.raises(NgptConfigError) as err:
        AutoModelForCausalLM.from_pretrained(folder)
    assert str(err.value) == (
        f"NGPTConfig ({folder}/config.json): 1 problem\n  - model.vocab_size = {value}: must be a positive integer, "
        "the number of token ids the model's embedding holds (a model's config.json gives it; only a training "
        "config may leave it to the dataset)"
    )


def test_a_config_json_whose_hidden_size_and_n_embd_disagree_is_named(hf_saved, tmp_path):
    """Fault: "hidden_size": 64 beside "n_embd": 32 was refused as "NGPTConfig: hidden_size = 64 and n_embd
    = 32 disagree", naming no file."""
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401
    from ngpt_ds.errors import NgptConfigError

    folder = _with_config(hf_saved, tmp_path, "gpt", hidden_size=64)
    with pytest.raises(NgptConfigError) as err:
        AutoModelForCausalLM.from_pretrained(folder)
    assert str(err.value) == (
        f"GPTBaselineConfig ({folder}/config.json): hidden_size = 64 and n_embd = 32 disagree (hidden_size is "
        "transformers' name for n_embd); give one of them"
    )


def _with_tensor(hf_saved: dict[str, Path], tmp_path: Path, arch: str, name: str, dtype: torch.dtype) -> Path:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / f"{arch}_{str(dtype).removeprefix('torch.')}"
    shutil.copytree(hf_saved[arch], folder)
    state = load_file(folder / "model.safetensors")
    state[name] = state[name].to(dtype)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


WEIGHTS_OF_A_DTYPE = {
    "gpt-int8": ("gpt", "model.final_norm.weight", torch.int8, "I8"),
    "gpt-bool": ("gpt", "model.final_norm.weight", torch.bool, "BOOL"),
    "gpt-complex64": ("gpt", "model.blocks.0.attn.qkv.weight", torch.complex64, "C64"),
    "gpt-float8": ("gpt", "model.final_norm.weight", torch.float8_e4m3fn, "F8_E4M3"),
    "ngpt-float8": ("ngpt", "model.blocks.1.mlp.down.weight", torch.float8_e4m3fn, "F8_E4M3"),
    "ngpt-complex64": ("ngpt", "model.blocks.1.mlp.down.weight", torch.complex64, "C64"),
}


@pytest.mark.parametrize("case", sorted(WEIGHTS_OF_A_DTYPE))
def test_weights_of_a_dtype_that_is_no_float_are_refused_naming_the_tensor(hf_saved, tmp_path, case):
    """Fault: from_pretrained cast every tensor of model.safetensors to the model's dtype: a GPT's int8, bool,
    float8 or complex64 weight loaded without a word (complex without its imaginary part), an nGPT's was
    refused as 'not unit norm' or loaded (complex64). ngpt_ds's own loader refuses them naming the tensor and
    its dtype (ngpt_ds.infer.loading.check_dtypes); from_pretrained now runs that check on the file's header."""
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401
    from ngpt_ds.errors import NgptConfigError

    arch, name, dtype, header_name = WEIGHTS_OF_A_DTYPE[case]
    folder = _with_tensor(hf_saved, tmp_path, arch, name, dtype)
    with pytest.raises(NgptConfigError) as err:
        AutoModelForCausalLM.from_pretrained(folder)
    assert str(err.value) == (
        f"{folder}/model.safetensors: {name} ({header_name}): weights must be float32, float64, bfloat16 or "
        "float16; the files are damaged, altered or from another program"
    )


def test_an_export_without_ngpt_ds_refuses_weights_of_a_dtype_that_is_no_float(hf_saved, tmp_path):
    """Fault: the dtype check ran only in the installed modeling code (it imported ngpt_ds.infer.loading, which an
    export does not carry): a folder loaded with trust_remote_code and no ngpt_ds cast an int8 weight to float
    without a word. The check lives in ngpt_ds.model.saved_weights now, which the folder carries."""
    folder = _with_tensor(hf_saved, tmp_path, "gpt", "model.final_norm.weight", torch.int8)
    assert (folder / "saved_weights.py").is_file()
    proc = load_without_ngpt_ds(folder, cwd=tmp_path)
    assert proc.stdout.strip().endswith(
        f"{folder}/model.safetensors: model.final_norm.weight (I8): weights must be float32, float64, bfloat16 or "
        "float16; the files are damaged, altered or from another program"
    ), (proc.stdout, proc.stderr[-2000:])


def test_a_state_dict_of_int8_weights_is_refused_and_float16_ones_load(hf_saved):
    """The same check on a state_dict passed to from_pretrained; a float16 weight in a GPT loads as before."""
    from safetensors.torch import load_file

    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.hf.configuration_ngpt import GPTBaselineConfig
    from ngpt_ds.hf.modeling_ngpt import GPTBaselineForCausalLM

    config = GPTBaselineConfig.from_pretrained(hf_saved["gpt"])
    state = load_file(hf_saved["gpt"] / "model.safetensors")
    state["model.final_norm.weight"] = state["model.final_norm.weight"].half()
    model = GPTBaselineForCausalLM.from_pretrained(None, config=config, state_dict=state)
    assert torch.equal(model.model.final_norm.weight, state["model.final_norm.weight"].float())
    state["model.final_norm.weight"] = state["model.final_norm.weight"].to(torch.int8)
    with pytest.raises(
        NgptConfigError, match=r"^the state_dict given to from_pretrained: model.final_norm.weight \(int8\)"
    ):
        GPTBaselineForCausalLM.from_pretrained(None, config=config, state_dict=state)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_ignore_mismatched_sizes_does_not_load_uninitialized_tensors(hf_saved, tmp_path, arch):
    """Fault: from_pretrained(..., ignore_mismatched_sizes=True) of a folder whose config.json says another
    vocab_size than its weights left the embedding and head uninitialized (this model's _init_weights does
    nothing): the check read transformers' missing and unexpected keys but not its mismatched ones, so the
    load went on to 'hold NaN or infinite values; the weights are corrupt' or, when the memory happened to be
    finite, loaded. Now the mismatched tensors are named with both shapes."""
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401
    from ngpt_ds.errors import NgptConfigError

    folder = _with_config(hf_saved, tmp_path, arch, vocab_size=600)
    # save_pretrained records the model config in the weights, which refuses this edit first; a folder without
    # the record (saved before it) is refused for the mismatched tensors themselves.
    from safetensors.torch import load_file, save_file

    weights = str(folder / "model.safetensors")
    save_file(load_file(weights), weights, metadata={"format": "pt"})
    with pytest.raises(NgptConfigError) as err:
        AutoModelForCausalLM.from_pretrained(folder, ignore_mismatched_sizes=True)
    shapes = {"model.embed.weight": "[512, 32]", "model.head.weight": "[512, 32]", "model.s_z.param": "[512]"}
    names = sorted(shapes) if arch == "ngpt" else ["model.embed.weight", "model.head.weight"]  # the GPT has no s_z
    listed = ", ".join(
        f"{n} ({shapes[n]} in the file, {shapes[n].replace('512', '600')} by config.json)" for n in names
    )
    assert str(err.value) == (
        f"{folder}/model.safetensors: the weights do not match config.json (mismatched {listed}); the file is "
        "damaged or from another model (ignore_mismatched_sizes=True cannot load it: this model leaves a tensor "
        "the file does not fill uninitialized). Export the checkpoint again"
    )


def test_an_ngpt_saved_in_float16_loads_in_float32(hf_saved, tmp_path):
    """Fault: the unit-norm check allowed for the dtype loaded, not the one stored: an nGPT saved in float16
    and loaded with dtype=torch.float32 was refused as 'not unit norm' (| ||w|| - 1 | = 0.000243 > 0.0001),
    the float16 rounding of its rows; ngpt_ds's own loader allows for the stored dtype (2e-3). A float16 file
    off the sphere by more than that is still refused."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401
    from ngpt_ds.errors import NgptConfigError

    half = tmp_path / "half"
    AutoModelForCausalLM.from_pretrained(hf_saved["ngpt"]).half().save_pretrained(half)
    model = AutoModelForCausalLM.from_pretrained(half, dtype=torch.float32)
    stored = load_file(half / "model.safetensors")
    assert next(model.parameters()).dtype == torch.float32
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, stored[name].float()), name

    stored["model.blocks.0.attn.qkv.weight"] *= 1.01  # off the sphere by ~0.01, beyond float16's 2e-3
    save_file(stored, str(half / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(NgptConfigError, match=r"not unit norm .*\| = 0\.0102 > 0\.002\)"):
        AutoModelForCausalLM.from_pretrained(half, dtype=torch.float32)
