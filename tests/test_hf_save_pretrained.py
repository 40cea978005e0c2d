"""`save_pretrained` of a model loaded through ngpt_ds's registered classes (`import ngpt_ds`, the README's
way) writes a folder that loads without ngpt_ds (`trust_remote_code=True`), as the `--format hf` export it
came from does: its config.json names the modeling files in `auto_map`, so they must be in the folder."""

import sys
from pathlib import Path

import pytest
import torch

from conftest import cpu_env, run

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

# Loads each folder with trust_remote_code in a process where ngpt_ds cannot be imported (as in
# tests/test_hf_export.py) and saves the logits of fixed tokens.
REMOTE = """\
import sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name == "ngpt_ds" or name.startswith("ngpt_ds."):
            raise ModuleNotFoundError("No module named " + repr(name))
sys.meta_path.insert(0, NotInstalled())  # the editable install's finder comes after this one
import torch
from transformers import AutoModelForCausalLM
tokens, out = torch.load(sys.argv[1]), {}
for folder in sys.argv[3:]:
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        out[folder] = model(tokens).logits
assert not [m for m in sys.modules if m == "ngpt_ds" or m.startswith("ngpt_ds.")]
torch.save(out, sys.argv[2])
"""


def test_save_pretrained_with_ngpt_ds_imported_loads_without_ngpt_ds(tmp_path, tiny_dataset):
    """Fault: a model loaded with ngpt_ds imported and saved with save_pretrained got a config.json whose
    auto_map names configuration_ngpt.py and modeling_ngpt.py, but not those files: without ngpt_ds,
    from_pretrained(saved, trust_remote_code=True) failed ('does not appear to have a file named
    configuration_ngpt.py'). A model built from a config without auto_map got none, so it could not load at all."""
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401  registers the classes with the Auto classes
    from ngpt_ds.data.tokenizer import Tokenizer
    from ngpt_ds.hf.configuration_ngpt import GPTBaselineConfig
    from ngpt_ds.hf.export import write_hf_export
    from ngpt_ds.hf.modeling_ngpt import GPTBaselineForCausalLM
    from ngpt_ds.infer import LoadedModel
    from ngpt_ds.model import ModelConfig, build_model

    torch.manual_seed(0)
    config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    tok = Tokenizer.load(tiny_dataset / "tokenizer.model")
    export = tmp_path / "export"
    export.mkdir()
    loaded = LoadedModel(
        model=build_model(config).eval(),
        config=config,
        tokenizer=tok,
        tokenizer_sha256="-",
        source=tmp_path,
        kind="export",
    )
    write_hf_export(loaded, export, name="export")

    ngpt = AutoModelForCausalLM.from_pretrained(export)
    assert type(ngpt).__module__ == "ngpt_ds.hf.modeling_ngpt"
    ngpt.save_pretrained(tmp_path / "ngpt_saved")
    gpt = GPTBaselineForCausalLM(
        GPTBaselineConfig.from_model_config(ModelConfig(**{**config.to_dict(), "arch": "gpt"}))
    )
    gpt.save_pretrained(tmp_path / "gpt_saved")

    tokens = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(1))
    torch.save(tokens, tmp_path / "tokens.pt")
    script = tmp_path / "remote.py"
    script.write_text(REMOTE)
    env = cpu_env(HF_HUB_OFFLINE=1, HF_MODULES_CACHE=tmp_path / "modules")
    env.pop("PYTHONPATH")
    folders = [str(tmp_path / "ngpt_saved"), str(tmp_path / "gpt_saved")]
    run([sys.executable, script, tmp_path / "tokens.pt", tmp_path / "out.pt", *folders], cwd=tmp_path, env=env)
    remote = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        for model, folder in zip((ngpt, gpt), folders):
            assert torch.equal(remote[folder], model(tokens).logits), Path(folder).name
