"""from_pretrained of a crafted or damaged folder: refused before use, with an error naming the file read
and what is wrong in it, as ngpt_ds's own loader (ngpt_ds.infer.loading) refuses an export."""

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """A random tiny model of each family, written by save_pretrained (config.json, model.safetensors)."""
    from ngpt_ds.hf.configuration_ngpt import CONFIGS
    from ngpt_ds.hf.modeling_ngpt import MODELS
    from ngpt_ds.model import ModelConfig

    root = tmp_path_factory.mktemp("hf_faults_loading")
    folders = {}
    for arch in ("ngpt", "gpt"):
        torch.manual_seed(0)
        config = ModelConfig(arch=arch, vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
        MODELS[arch](CONFIGS[arch].from_model_config(config)).save_pretrained(root / arch)
        folders[arch] = root / arch
    return folders


def _with_config(saved: dict[str, Path], tmp_path: Path, arch: str, **fields) -> Path:
    folder = tmp_path / f"crafted_{arch}"
    shutil.copytree(saved[arch], folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(fields)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("value", [None, 0])
def test_a_config_json_without_a_positive_vocab_size_is_refused_naming_it(saved, tmp_path, value):
    """Fault: "vocab_size": null in config.json gave "ModelConfig.vocab_size must be resolved (from the
    dataset) before building a model", naming no file, with advice for a training config (a model has no
    dataset); "vocab_size": 0 was named, but with the advice to write null."""
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401  (registers model_type "ngpt")
    from ngpt_ds.errors import NgptConfigError

    folder = _with_config(saved, tmp_path, "ngpt", vocab_size=value)
    with pytest.raises(NgptConfigError) as err:
        AutoModelForCausalLM.from_pretrained(folder)
    assert str(err.value) == (
        f"NGPTConfig ({folder}/config.json): 1 problem\n  - model.vocab_size = {value}: must be a positive integer, "
        "the number of token ids the model's embedding holds (a model's config.json gives it; only a training "
        "config may leave it to the dataset)"
    )


def test_a_config_json_whose_hidden_size_and_n_embd_disagree_is_named(saved, tmp_path):
    """Fault: "hidden_size": 64 beside "n_embd": 32 was refused as "NGPTConfig: hidden_size = 64 and n_embd
    = 32 disagree", naming no file."""
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401
    from ngpt_ds.errors import NgptConfigError

    folder = _with_config(saved, tmp_path, "gpt", hidden_size=64)
    with pytest.raises(NgptConfigError) as err:
        AutoModelForCausalLM.from_pretrained(folder)
    assert str(err.value) == (
        f"GPTBaselineConfig ({folder}/config.json): hidden_size = 64 and n_embd = 32 disagree (hidden_size is "
        "transformers' name for n_embd); give one of them"
    )
