"""Loading a `--format hf` export through transformers: a damaged or crafted model.safetensors is refused
with an error naming the file and the tensor, as ngpt_ds's own loader (ngpt_ds.infer.loading) refuses one;
`generate` works on prompts holding `</s>` also when the caller turns EOS stopping off."""

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory, tiny_dataset) -> dict:
    """A random tiny nGPT written by write_hf_export, with its state_dict (keys as in the export)."""
    from ngpt_ds.data.tokenizer import Tokenizer
    from ngpt_ds.hf.export import write_hf_export
    from ngpt_ds.infer import LoadedModel
    from ngpt_ds.model import ModelConfig, build_model

    root = tmp_path_factory.mktemp("hf_load")
    torch.manual_seed(0)
    config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    model = build_model(config).eval()
    tok = Tokenizer.load(tiny_dataset / "tokenizer.model")
    folder = root / "hf"
    folder.mkdir()
    loaded = LoadedModel(model=model, config=config, tokenizer=tok, tokenizer_sha256="-", source=root, kind="export")
    state = write_hf_export(loaded, folder, name="hf")
    return {"folder": folder, "state": state, "model": model}


def _damaged(hf_pair: dict, tmp_path: Path, change) -> Path:
    from safetensors.torch import save_file

    folder = tmp_path / "damaged"
    shutil.copytree(hf_pair["folder"], folder)
    state = {k: v.clone() for k, v in hf_pair["state"].items()}
    change(state)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _scaled(state: dict) -> None:
    state["model.embed.weight"] *= 3


def _nan(state: dict) -> None:
    state["model.head.weight"][0, 0] = float("nan")


def _extra(state: dict) -> None:
    state["model.stranger"] = torch.zeros(3)


DAMAGES = {
    "missing": (lambda s: s.pop("model.blocks.0.attn.qkv.weight"), "missing model.blocks.0.attn.qkv.weight"),
    "not_unit_norm": (_scaled, "not unit norm"),
    "nan": (_nan, "model.head.weight hold NaN"),
    "unexpected": (_extra, "unexpected model.stranger"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_hf_weights_are_refused_naming_the_file(hf_pair, tmp_path, damage):
    """Fault: AutoModelForCausalLM.from_pretrained loaded an export whose model.safetensors lacks a tensor
    (the model's _init_weights leaves it as uninitialized memory: NaN logits), holds NaN, is off the
    sphere, or holds a stranger's tensor, with at most a log table; ngpt_ds's own loader refuses each."""
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401  (registers model_type "ngpt")
    from ngpt_ds.errors import NgptConfigError

    change, message = DAMAGES[damage]
    folder = _damaged(hf_pair, tmp_path, change)
    with pytest.raises(NgptConfigError, match=message) as err:
        AutoModelForCausalLM.from_pretrained(folder)
    assert str(folder / "model.safetensors") in str(err.value)


def test_intact_hf_weights_load_in_fp32_and_bf16(hf_pair):
    """The checks refuse nothing sound: fp32 logits bit for bit, bf16 (rounded unit vectors) accepted."""
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401

    tokens = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(1))
    model, info = AutoModelForCausalLM.from_pretrained(hf_pair["folder"], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, hf_pair["model"](tokens)[0])
    bf16 = AutoModelForCausalLM.from_pretrained(hf_pair["folder"], dtype=torch.bfloat16)
    assert next(bf16.parameters()).dtype == torch.bfloat16


def test_generate_without_eos_on_a_prompt_holding_eos(hf_pair):
    """Fault: generate(ids, eos_token_id=None) on a prompt holding `</s>` (the document separator the model
    was trained on, also the pad id) made transformers infer an attention mask with a 0 at each `</s>`,
    which the model refused ("has no padding mask"), though nothing was padded."""
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401
    from ngpt_ds.infer import GREEDY, generate_ids

    model = AutoModelForCausalLM.from_pretrained(hf_pair["folder"])
    eos = json.loads((hf_pair["folder"] / "config.json").read_text())["eos_token_id"]
    assert eos == 2
    for prompt in ([[eos]], [[5, eos, 6, 7], [9, 8, eos, 1]]):
        ids = torch.tensor(prompt)
        out = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)[:, ids.shape[1] :]
        expected = torch.stack(list(generate_ids(hf_pair["model"], ids, 8, GREEDY)), dim=1)
        assert torch.equal(out, expected)
    # Padding the caller declares is honoured (it was refused): the left pad is left out, as if the prompt
    # were [5, 6] alone.
    padded = torch.tensor([[eos, 5, 6]])
    out = model.generate(
        padded, attention_mask=torch.tensor([[0, 1, 1]]), max_new_tokens=4, do_sample=False, eos_token_id=None
    )
    alone = torch.stack(list(generate_ids(hf_pair["model"], torch.tensor([[5, 6]]), 4, GREEDY)), dim=1)
    assert torch.equal(out[:, padded.shape[1] :], alone)


def test_a_cache_passed_with_use_cache_false_is_used(hf_pair):
    """Fault: model(ids, past_key_values=cache, use_cache=False) ignored the cache and scored ids as if they
    began the sequence (logits off by 0.037 on this model); transformers' own models use a cache they are
    given whatever use_cache says."""
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401

    model = AutoModelForCausalLM.from_pretrained(hf_pair["folder"])
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
        cache = model(ids[:, :8], use_cache=True).cache
        rest = model(ids[:, 8:], past_key_values=cache, use_cache=False)
    assert rest.cache is None and cache.get_seq_length() == 12
    torch.testing.assert_close(rest.logits, full[:, 8:], rtol=0, atol=1e-6)


def test_an_invalid_config_json_is_named(hf_pair, tmp_path):
    """Fault: a config.json whose fields do not make a model (n_head 3 with n_embd 32) was reported as
    "NGPTConfig: 1 problem", naming neither the folder nor the file."""
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401
    from ngpt_ds.errors import NgptConfigError

    folder = tmp_path / "bad_config"
    shutil.copytree(hf_pair["folder"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["n_head"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(NgptConfigError) as err:
        AutoModelForCausalLM.from_pretrained(folder)
    assert str(err.value).startswith(f"NGPTConfig ({folder}/config.json): 1 problem")
    assert "model.n_embd = 32: must be divisible by n_head = 3" in str(err.value)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("rope_base", "abc", "model.rope_base = 'abc': must be a number"),
        ("alpha_attn_init", float("nan"), "model.alpha_attn_init = nan: must be a finite number"),
        ("s_qk_scale", 1e-300, "model.s_qk_scale = 1e-300: is below float32's smallest normal number"),
    ],
)
def test_a_config_json_field_of_a_wrong_type_or_out_of_float32_range_is_named(hf_pair, tmp_path, field, value, message):
    """Fault: config.json reaches ModelConfig.validate() without from_dict's type checks: "rope_base": "abc" was a
    TypeError traceback ('>' not supported between 'str' and 'int'), "alpha_attn_init": NaN and "s_qk_scale":
    1e-300 (stored as 0 in float32, times init / scale = inf) loaded a model whose logits were all NaN."""
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401
    from ngpt_ds.errors import NgptConfigError

    folder = tmp_path / "crafted_config"
    shutil.copytree(hf_pair["folder"], folder)
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))  # NaN is written as json.dumps writes it
    with pytest.raises(NgptConfigError) as err:
        AutoModelForCausalLM.from_pretrained(folder)
    assert str(err.value).startswith(f"NGPTConfig ({folder}/config.json): 1 problem")
    assert message in str(err.value)


def test_a_config_json_saying_a_billion_layers_is_refused_before_describing_the_model(hf_pair, tmp_path, monkeypatch):
    """Fault (review): "n_layer": 1000000000 in an HF export's config.json made from_pretrained describe that model
    block by block (~20 ms and 40 KB each) until the OOM killer; validate() now bounds n_layer at 1024."""
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.hf import modeling_ngpt

    folder = tmp_path / "crafted_layers"
    shutil.copytree(hf_pair["folder"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["n_layer"] = 10**9
    (folder / "config.json").write_text(json.dumps(config))

    built = []
    original = modeling_ngpt.build_model

    def guarded(model_config):
        built.append(model_config.n_layer)
        if model_config.n_layer > 1024:
            raise AssertionError(f"from_pretrained described a model of {model_config.n_layer} blocks")
        return original(model_config)

    monkeypatch.setattr(modeling_ngpt, "build_model", guarded)
    with pytest.raises(NgptConfigError) as err:
        AutoModelForCausalLM.from_pretrained(folder)
    assert str(err.value).startswith(f"NGPTConfig ({folder}/config.json): 1 problem")
    assert "model.n_layer = 1000000000: is above the largest supported, 1024" in str(err.value)
    assert built == []


def test_transformers_names_of_the_fields_build_the_model_they_name():
    """Fault: NGPTConfig(hidden_size=64, num_attention_heads=2, ...) gave n_embd 256, n_head 4 (the defaults),
    without a word: PretrainedConfig set the fields through attribute_map, then the defaults overwrote them."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.hf.configuration_ngpt import GPTBaselineConfig, NGPTConfig

    for cls in (NGPTConfig, GPTBaselineConfig):
        config = cls(
            hidden_size=64, num_attention_heads=2, num_hidden_layers=3, max_position_embeddings=128, vocab_size=512
        )
        model_config = config.to_model_config()
        assert (model_config.n_embd, model_config.n_head, model_config.n_layer, model_config.seq_len) == (64, 2, 3, 128)
        assert config.hidden_size == 64
    with pytest.raises(NgptConfigError, match=r"^NGPTConfig: hidden_size = 64 and n_embd = 32 disagree"):
        NGPTConfig(hidden_size=64, n_embd=32)
    assert NGPTConfig(hidden_size=64, n_embd=64).n_embd == 64
