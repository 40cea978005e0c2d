"""get_output_embeddings / set_output_embeddings of the transformers causal LMs (ngpt_ds/hf/output_head.py).

Fault: transformers' own get_output_embeddings looks for an `lm_head` attribute, so for nGPT and the GPT baseline
(whose head is `model.head`) it returned None: the quantizers' list of modules to keep unconverted
(get_keys_to_not_convert), FSDP's wrapping policy, PEFT and the generation utilities never saw the head, and
set_output_embeddings stopped in AttributeError ("... object has no attribute 'lm_head'"). Now both give the head,
which transformers never ties to the input embedding, through resize_token_embeddings and save/load."""

import subprocess
import sys

import pytest
import torch
from launching import cpu_env

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

IDS = torch.tensor([[5, 17, 99, 4, 300, 2], [7, 7, 8, 9, 10, 11]])


def _model(arch: str, seed: int = 0, **extra):
    """A random tiny causal LM of the installed ngpt_ds classes."""
    from ngpt_ds.hf.configuration_ngpt import CONFIGS
    from ngpt_ds.hf.modeling_ngpt import MODELS
    from ngpt_ds.model import ModelConfig

    torch.manual_seed(seed)
    config = ModelConfig(arch=arch, vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    return MODELS[arch](CONFIGS[arch].from_model_config(config, **extra)).eval()


def _separate(model) -> bool:
    """Whether the head and the input embedding are two parameters with storages of their own."""
    head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    return head is not embed and head.untyped_storage().data_ptr() != embed.untyped_storage().data_ptr()


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
@torch.no_grad()
def test_get_output_embeddings_is_the_head_and_stays_untied(arch):
    """On the old code `model.get_output_embeddings()` was None (this test's first assert), and the quantizers' list
    of modules to keep in full precision left the head out. The module returned is the weight matrix: the GPT
    baseline's logits are head(last hidden state), nGPT's are s_z times it (eq. 24)."""
    from transformers.quantizers.base import get_keys_to_not_convert

    model = _model(arch)
    if arch == "ngpt":  # s_z as trained, not its init of 1 everywhere
        model.model.s_z.param.mul_(torch.rand(512) * 8 + 0.5)
    head = model.get_output_embeddings()
    assert head is model.model.head
    assert tuple(head.weight.shape) == (512, 32)
    assert "model.head" in get_keys_to_not_convert(model)
    out = model(IDS, output_hidden_states=True)
    last = out.hidden_states[-1]
    if arch == "ngpt":
        assert torch.equal(out.logits, head(last, row_scale=model.model.s_z()))
        assert head(last).abs().max() <= 1 + 1e-6  # cosines: unit rows times a unit h
        assert not torch.allclose(out.logits, head(last), atol=1e-3)
    else:
        assert torch.equal(out.logits, head(last))

    # Never tied: not by post_init, not by tie_weights, not even when the config asks for it.
    assert model.all_tied_weights_keys == {} and model.config.tie_word_embeddings is False
    model.tie_weights()
    assert _separate(model)
    asking = _model(arch, tie_word_embeddings=True)
    asking.tie_weights()
    assert _separate(asking)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
@torch.no_grad()
def test_the_base_model_has_no_output_embeddings(arch, tmp_path):
    """AutoModel's class (the transformer without its head) gives None, as transformers' base models do."""
    from ngpt_ds.hf.modeling_ngpt import BASE_MODELS

    _model(arch).save_pretrained(tmp_path / arch)
    assert BASE_MODELS[arch].from_pretrained(tmp_path / arch).get_output_embeddings() is None


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
@torch.no_grad()
def test_resize_and_save_load_keep_the_head_separate_and_the_logits_equal(arch, tmp_path):
    """After resize_token_embeddings the head returned is the resized one (520 rows), the old tokens' logits are
    unchanged, and save_pretrained/from_pretrained gives the same logits with the head still untied."""
    model = _model(arch)
    before = model(IDS).logits
    model.resize_token_embeddings(520)
    head = model.get_output_embeddings()
    assert head is model.model.head and tuple(head.weight.shape) == (520, 32)
    assert torch.equal(model(IDS).logits[..., :512], before)
    assert _separate(model)

    model.save_pretrained(tmp_path / "resized")
    loaded = type(model).from_pretrained(tmp_path / "resized").eval()
    assert _separate(loaded) and loaded.all_tied_weights_keys == {}
    assert torch.equal(loaded.get_output_embeddings().weight, head.weight)
    ids = torch.tensor([[5, 519, 3, 513]])
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert torch.equal(loaded(IDS).logits[..., :512], before)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
@torch.no_grad()
def test_set_output_embeddings_puts_a_head_in_and_refuses_one_it_cannot_use(arch, tmp_path):
    """On the old code set_output_embeddings raised AttributeError: no attribute 'lm_head'. Now a head of the model's
    kind and shape goes in (the logits follow it, and a save/load keeps it); anything else is a ValueError that says
    what the head must be and how to change its weights or the vocabulary."""
    from ngpt_ds.model.layers import Projection

    model, other = _model(arch), _model(arch, seed=1)
    new = other.get_output_embeddings()
    model.set_output_embeddings(new)
    assert model.get_output_embeddings() is new and model.model.head is new
    last = model(IDS, output_hidden_states=True).hidden_states[-1]
    scale = model.model.s_z() if arch == "ngpt" else None
    assert torch.equal(model(IDS).logits, new(last, row_scale=scale))
    model.save_pretrained(tmp_path / "new_head")
    loaded = type(model).from_pretrained(tmp_path / "new_head").eval()
    assert torch.equal(loaded(IDS).logits, model(IDS).logits) and _separate(loaded)

    sphere = arch == "ngpt"
    refused = [
        (torch.nn.Linear(32, 512, bias=False), "is a Linear, not an ngpt_ds Projection"),
        (Projection(32, 500, style="column", on_sphere=sphere, init_std=0.02), "of shape [500, 32], not [512, 32]"),
        (Projection(32, 512, style="column", on_sphere=not sphere, init_std=0.02), f"on_sphere={sphere}"),
    ]
    for head, message in refused:
        with pytest.raises(ValueError, match="set_output_embeddings: the new head") as info:
            model.set_output_embeddings(head)
        assert message in str(info.value) and "resize_token_embeddings" in str(info.value)
        assert model.get_output_embeddings() is new


REMOTE = """\
import sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name == "ngpt_ds" or name.startswith("ngpt_ds."):
            raise ModuleNotFoundError("No module named " + repr(name))
sys.meta_path.insert(0, NotInstalled())
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
head = model.get_output_embeddings()
assert head is model.model.head, head
assert head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
print("head", type(head).__module__, list(head.weight.shape))
"""


def test_an_export_loaded_without_ngpt_ds_gives_its_head(random_hf_export, tmp_path):
    """The `--format hf` export carries output_head.py with the modeling code: loaded with trust_remote_code and no
    ngpt_ds installed, get_output_embeddings gives the head of the folder's own classes."""
    assert (random_hf_export / "output_head.py").is_file()
    env = cpu_env(HF_HUB_OFFLINE=1, HF_MODULES_CACHE=tmp_path / "modules")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", REMOTE, random_hf_export], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "head transformers_modules." in proc.stdout and "[512, 32]" in proc.stdout
