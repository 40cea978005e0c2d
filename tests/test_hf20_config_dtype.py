"""config.json's `dtype` (or `torch_dtype`) names the dtype from_pretrained loads the weights in by default;
transformers looks any string up as an attribute of torch. One that is no float dtype is refused by name."""

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from ngpt_ds.hf.configuration_ngpt import CONFIGS
    from ngpt_ds.hf.modeling_ngpt import MODELS
    from ngpt_ds.model import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=1, n_embd=32, n_head=2, seq_len=32)
    folder = tmp_path_factory.mktemp("hf20_dtype") / "model"
    MODELS["ngpt"](CONFIGS["ngpt"].from_model_config(config)).save_pretrained(folder)
    return folder, json.loads((folder / "config.json").read_text())


def _with(saved, tmp_path, key, value):
    folder, config = saved
    edited = tmp_path / "edited"
    edited.mkdir()
    shutil.copyfile(folder / "model.safetensors", edited / "model.safetensors")  # a link out of the folder is refused
    (edited / "config.json").write_text(json.dumps({**config, key: value}))
    return edited


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("dtype", "float8_e4m3fn", "'float8_e4m3fn'"),
        ("dtype", "Tensor", "'Tensor'"),
        ("dtype", "__class__", "'__class__'"),
        ("torch_dtype", "int8", "'int8'"),
        ("dtype", {"model": "float16"}, "{'model': 'float16'}"),
    ],
)
def test_a_config_dtype_that_is_no_float_dtype_is_refused_by_name(saved, tmp_path, key, value, shown):
    """Fault: from_pretrained ended in a traceback naming neither the file nor the field. Before: 'float8_e4m3fn':
    TypeError "couldn't find storage object Float8_e4m3fnStorage"; 'Tensor': TypeError "invalid dtype object";
    '__class__': IndexError "list index out of range"; torch_dtype 'int8' and a dict: loaded in float32 without a
    word. Now: one NgptConfigError naming config.json's field."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.hf.modeling_ngpt import NGPTForCausalLM

    folder = _with(saved, tmp_path, key, value)
    with pytest.raises(NgptConfigError) as err:
        NGPTForCausalLM.from_pretrained(folder)
    assert str(err.value) == (
        f"NGPTConfig ({Path(folder).resolve() / 'config.json'}): config.json's {key} = {shown} must be one of float32, bfloat16, float16, float64 (the dtype the "
        "weights load in by default), or absent; the file was edited, damaged or is from another program"
    )


@pytest.mark.parametrize(("value", "dtype"), [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_a_float_config_dtype_loads(saved, tmp_path, value, dtype):
    from ngpt_ds.hf.modeling_ngpt import NGPTForCausalLM

    model = NGPTForCausalLM.from_pretrained(_with(saved, tmp_path, "dtype", value))
    assert model.model.embed.weight.dtype == dtype
    assert NGPTForCausalLM.from_pretrained(saved[0], dtype=torch.float16).model.embed.weight.dtype == torch.float16
