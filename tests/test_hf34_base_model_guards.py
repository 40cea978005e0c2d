"""The base model classes of AutoModel (NGPTModel, GPTBaselineModel) keep every guard of the causal LM.

They share the causal LM's from_pretrained, forward checks and training hooks (ngpt_ds.hf.modeling_ngpt); these
tests pin that a crafted folder is refused by AutoModel with the causal LM's own message, that a 16-bit load keeps
nGPT's scaling vectors in float32, that a left-padded row's hidden states are its prompt's alone, and that a torch
fine-tune of the base model (activation checkpointing on, or a deep copy) keeps nGPT on the sphere. Probed by hand
before (session 34): all held; a class that lost its family's attributes or the sphere hook fails here. A base model
saved by save_pretrained loads without ngpt_ds, as either class."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from without_ngpt_ds import NOT_INSTALLED

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

IDS = torch.randint(0, 512, (2, 8), generator=torch.Generator().manual_seed(3))


def _auto(kind: str):
    from transformers import AutoModel, AutoModelForCausalLM

    import ngpt_ds  # noqa: F401  (registers both families)

    return {"base": AutoModel, "causal": AutoModelForCausalLM}[kind]


def _weights(folder, edit):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    weights = folder / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        metadata = f.metadata()  # the recorded model config: kept, as an export's
    tensors = edit(load_file(str(weights)))
    save_file(tensors, str(weights), metadata=metadata)


def _missing(folder, tmp_path):
    _weights(folder, lambda t: {k: v for k, v in t.items() if k != "model.blocks.1.attn.qkv.weight"})


def _nan(folder, tmp_path):
    def edit(t):
        t["model.blocks.0.attn.qkv.weight"][0, 0] = float("nan")
        return t

    _weights(folder, edit)


def _off_sphere(folder, tmp_path):
    def edit(t):
        t["model.blocks.0.attn.qkv.weight"] *= 1.5
        return t

    _weights(folder, edit)


def _edited_config(folder, tmp_path):
    config = json.loads((folder / "config.json").read_text())
    config["n_head"] = 4
    (folder / "config.json").write_text(json.dumps(config))


def _pickle_calling_os_system(folder, tmp_path):
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(
        b"\x80\x04cos\nsystem\n(V" + f"touch {tmp_path / 'ran'}".encode() + b"\ntR."
    )


CRAFTS = {
    "missing": (_missing, "the weights do not match config.json (missing model.blocks.1.attn.qkv.weight)"),
    "nan": (_nan, "model.blocks.0.attn.qkv.weight hold NaN or infinite values"),
    "off_sphere": (_off_sphere, "an nGPT weight matrix is not unit norm along its declared dim"),
    "edited_config": (_edited_config, "n_head (num_attention_heads) = 4, but the weights in model.safetensors"),
    "pickle": (_pickle_calling_os_system, "this pickled weights file needs os.system"),
}


@pytest.mark.parametrize("case", sorted(CRAFTS))
def test_automodel_refuses_a_crafted_folder_with_the_causal_lms_message(hf_saved, tmp_path, case):
    from ngpt_ds.errors import NgptConfigError

    craft, expected = CRAFTS[case]
    folder = tmp_path / "crafted"
    shutil.copytree(hf_saved["ngpt"], folder)
    craft(folder, tmp_path)
    messages = {}
    for kind in ("causal", "base"):
        with pytest.raises(NgptConfigError) as refused:
            _auto(kind).from_pretrained(str(folder))
        messages[kind] = str(refused.value)
    assert expected in messages["base"]
    assert messages["base"] == messages["causal"]
    assert not (tmp_path / "ran").exists()


def test_a_bfloat16_base_model_keeps_ngpts_scaling_vectors_in_float32(hf_saved):
    model = _auto("base").from_pretrained(hf_saved["ngpt"], dtype=torch.bfloat16).eval()
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    scales = {name for name in dtypes if name.endswith(("alpha.param", "s_qk.param", "s_u.param", "s_v.param"))}
    assert len(scales) == 10 and {dtypes[name] for name in scales | {"model.s_z.param"}} == {torch.float32}
    assert dtypes["model.blocks.0.attn.qkv.weight"] == torch.bfloat16
    with torch.no_grad():
        last = model(IDS).last_hidden_state
    assert last.dtype == torch.bfloat16
    assert (last.float().norm(dim=-1) - 1).abs().max().item() < 8e-3  # bf16's rounding of unit vectors


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_a_left_padded_rows_hidden_states_are_its_prompts_alone(hf_saved, arch):
    model = _auto("base").from_pretrained(hf_saved[arch]).eval()
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])
    with torch.no_grad():
        padded = model(IDS, attention_mask=mask, output_hidden_states=True)
        alone = model(IDS[:1, 3:], output_hidden_states=True)
        whole = model(IDS[1:], output_hidden_states=True)
    assert len(padded.hidden_states) == 3
    for p, a, w in zip(padded.hidden_states, alone.hidden_states, whole.hidden_states, strict=True):
        torch.testing.assert_close(p[0, 3:], a[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(p[1], w[0], rtol=0, atol=1e-6)
        assert bool(torch.isfinite(p).all())  # the padding positions too
    torch.testing.assert_close(padded.last_hidden_state[0, 3:], alone.last_hidden_state[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("how", ["checkpointing", "deepcopy"])
def test_a_torch_fine_tune_of_the_base_model_stays_on_the_sphere(hf_saved, how):
    from ngpt_ds.model.sphere import max_norm_deviation

    model = _auto("base").from_pretrained(hf_saved["ngpt"])
    if how == "checkpointing":
        model.gradient_checkpointing_enable()
    else:
        model = copy.deepcopy(model)
    model.train()
    before = model.model.blocks[0].attn.qkv.weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        out = model(IDS)
        assert (out.cache is None) == (how == "checkpointing")  # no cache filled while recomputing blocks
        (out.last_hidden_state[..., 0].mean() + out.last_hidden_state.pow(3).mean()).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert (model.model.blocks[0].attn.qkv.weight - before).abs().max().item() > 1e-3  # it trained
    assert max_norm_deviation(model.model) < 1e-5  # without the renormalization: 0.119


SAVED_BASE_WITHOUT_NGPT_DS = (
    NOT_INSTALLED
    + """
import torch
from transformers import AutoModel, AutoModelForCausalLM
folder, tokens, out = sys.argv[1:4]
ids = torch.load(tokens)
with torch.no_grad():
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    causal = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    torch.save({"classes": [type(base).__name__, type(causal).__name__], "module": type(base).__module__,
                "last": base(ids).last_hidden_state, "logits": causal(ids).logits}, out)
"""
)


def test_a_saved_base_model_loads_without_ngpt_ds_as_either_class(hf_saved, tmp_path):
    """save_pretrained of an NGPTModel writes the modeling files and an auto_map naming both classes: the folder
    loads through its own code, as the base model and as the causal LM, with the installed classes' outputs."""
    import os
    import sys

    from conftest import run

    base = _auto("base").from_pretrained(hf_saved["ngpt"]).eval()
    base.save_pretrained(tmp_path / "saved")
    with torch.no_grad():
        expected_last = base(IDS).last_hidden_state
        expected_logits = _auto("causal").from_pretrained(tmp_path / "saved").eval()(IDS).logits
    torch.save(IDS, tmp_path / "ids.pt")
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    script = [sys.executable, "-c", SAVED_BASE_WITHOUT_NGPT_DS, tmp_path / "saved", tmp_path / "ids.pt"]
    run([*script, tmp_path / "out.pt"], cwd=tmp_path, env=env)
    result = torch.load(tmp_path / "out.pt")
    assert result["classes"] == ["NGPTModel", "NGPTForCausalLM"]
    assert result["module"].startswith("transformers_modules.")
    assert torch.equal(result["last"], expected_last)
    assert torch.equal(result["logits"], expected_logits)
