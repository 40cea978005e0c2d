"""ngpt_ds/hf/modeling_ngpt.py split by job: from_pretrained and its checks in pretrained_loading.py, save_pretrained in
pretrained_saving.py, the models in modeling_ngpt.py. Not a fault: guards that the split kept what users and folders
rely on. Every public name still imports from ngpt_ds.hf.modeling_ngpt and lives there (auto_map names
`modeling_ngpt.<class>`); a folder saved by the new code carries the new files and loads without ngpt_ds, again after
the remote-code model saved it itself (transformers then copies the files modeling_ngpt.py imports); and a folder
saved by the code before the split (a `git archive` of that commit: one modeling_ngpt.py) loads with
trust_remote_code without ngpt_ds (its own code), and with ngpt_ds imported (the installed, split classes, with or
without trust_remote_code), to the logits that code computed."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from launching import REPO, cpu_env, run

BEFORE_SPLIT = "2091d86"
"""The last commit whose modeling_ngpt.py held everything (468 lines)."""

TOKENS = torch.tensor([[5, 77, 300, 12, 9, 401, 3, 1], [3, 1, 4, 1, 5, 9, 2, 6]])

SAVE = """\
import sys
import torch
from ngpt_ds.hf.configuration_ngpt import CONFIGS
from ngpt_ds.hf.modeling_ngpt import MODELS
from ngpt_ds.model import ModelConfig
import ngpt_ds
assert ngpt_ds.__file__.startswith(sys.argv[2]), ngpt_ds.__file__
out = {}
for arch in ("ngpt", "gpt"):
    torch.manual_seed(0)
    config = ModelConfig(arch=arch, vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    model = MODELS[arch](CONFIGS[arch].from_model_config(config)).eval()
    model.save_pretrained(sys.argv[1] + "/" + arch)
    with torch.no_grad():
        out[arch] = model(torch.load(sys.argv[3])).logits
torch.save(out, sys.argv[4])
"""

REMOTE = """\
import sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name == "ngpt_ds" or name.startswith("ngpt_ds."):
            raise ModuleNotFoundError("No module named " + repr(name))
sys.meta_path.insert(0, NotInstalled())
import torch
from transformers import AutoModelForCausalLM
out = {}
for folder in sys.argv[3:]:
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    model.save_pretrained(folder + "_again")  # the remote-code model saves itself: transformers copies its files
    again = AutoModelForCausalLM.from_pretrained(folder + "_again", trust_remote_code=True).eval()
    with torch.no_grad():
        out[folder] = (model(torch.load(sys.argv[1])).logits, again(torch.load(sys.argv[1])).logits)
assert not [m for m in sys.modules if m == "ngpt_ds" or m.startswith("ngpt_ds.")]
torch.save(out, sys.argv[2])
"""


def _without_ngpt_ds(tmp_path, folders) -> dict:
    """Each folder loaded with trust_remote_code where ngpt_ds cannot be imported, and again after saving itself:
    {folder: (logits, logits after the round trip)}."""
    torch.save(TOKENS, tmp_path / "tokens.pt")
    script = tmp_path / "remote.py"
    script.write_text(REMOTE)
    env = cpu_env(HF_HUB_OFFLINE=1, HF_MODULES_CACHE=tmp_path / "modules")
    env.pop("PYTHONPATH")
    out = tmp_path / "remote.pt"
    run([sys.executable, script, tmp_path / "tokens.pt", out, *folders], cwd=tmp_path, env=env)
    return torch.load(out)


def test_the_public_names_still_live_in_modeling_ngpt():
    from ngpt_ds.hf import modeling_ngpt
    from ngpt_ds.hf.modeling_ngpt import (  # noqa: F401  the import paths users and ngpt_ds.hf.trainer use
        _SPHERE_MODELS,
        BASE_MODELS,
        MODELS,
        GPTBaselineForCausalLM,
        GPTBaselineModel,
        NGPTForCausalLM,
        NGPTModel,
    )

    for cls in (*MODELS.values(), *BASE_MODELS.values()):
        assert cls.__module__ == "ngpt_ds.hf.modeling_ngpt"
        assert getattr(modeling_ngpt, cls.__name__) is cls
    assert NGPTForCausalLM.auto_map() == {
        "AutoConfig": "configuration_ngpt.NGPTConfig",
        "AutoModel": "modeling_ngpt.NGPTModel",
        "AutoModelForCausalLM": "modeling_ngpt.NGPTForCausalLM",
    }
    assert GPTBaselineModel.auto_map()["AutoModelForCausalLM"] == "modeling_ngpt.GPTBaselineForCausalLM"
    lines = {f.name: len(f.read_text().splitlines()) for f in (REPO / "ngpt_ds" / "hf").glob("*.py")}
    assert max(lines.values()) < 400, lines


def test_a_folder_saved_by_the_split_code_loads_without_ngpt_ds(hf_saved, tmp_path):
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401  registers the families with the Auto classes

    folders = [hf_saved["ngpt"], hf_saved["gpt"]]
    for folder in folders:
        assert {"modeling_ngpt.py", "pretrained_loading.py", "pretrained_saving.py"} <= {
            p.name for p in folder.glob("*.py")
        }
    remote = _without_ngpt_ds(tmp_path, folders)
    for folder in folders:
        with torch.no_grad():
            want = AutoModelForCausalLM.from_pretrained(folder).eval()(TOKENS).logits
        got, again = remote[str(folder)]
        assert torch.equal(got, want) and torch.equal(again, want)


@pytest.fixture(scope="module")
def saved_before_split(tmp_path_factory):
    """Both families saved by the code of BEFORE_SPLIT (a `git archive` of it, run in its own process), with the logits
    that code computed on TOKENS."""
    root = tmp_path_factory.mktemp("before_split")
    old = root / "code"
    old.mkdir()
    got = subprocess.run(["git", "-C", REPO, "archive", BEFORE_SPLIT], capture_output=True)
    assert got.returncode == 0, (
        f"this test reads commit {BEFORE_SPLIT} of the repository's history, which this checkout lacks (a shallow "
        f"clone: `git fetch --unshallow`): {got.stderr.decode(errors='replace')}"
    )
    archive = got.stdout
    subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
    assert len((old / "ngpt_ds/hf/modeling_ngpt.py").read_text().splitlines()) > 400  # the unsplit file
    assert not (old / "ngpt_ds/hf/pretrained_loading.py").exists()
    torch.save(TOKENS, root / "tokens.pt")
    script = root / "save.py"
    script.write_text(SAVE)
    env = cpu_env(PYTHONPATH=old)
    run([sys.executable, script, root / "saved", old, root / "tokens.pt", root / "logits.pt"], cwd=root, env=env)
    return root / "saved", torch.load(root / "logits.pt")


def test_a_folder_saved_before_the_split_loads_with_trust_remote_code(saved_before_split, tmp_path):
    saved, logits = saved_before_split
    folders = [saved / "ngpt", saved / "gpt"]
    assert not (saved / "ngpt" / "pretrained_loading.py").exists()  # the old layout: one modeling_ngpt.py
    remote = _without_ngpt_ds(tmp_path, folders)
    for arch, folder in zip(("ngpt", "gpt"), folders, strict=True):
        got, again = remote[str(folder)]
        assert torch.equal(got, logits[arch]) and torch.equal(again, logits[arch])


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_a_folder_saved_before_the_split_loads_with_ngpt_ds_imported(saved_before_split, arch):
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401  registers the families with the Auto classes

    saved, logits = saved_before_split
    # With ngpt_ds imported, trust_remote_code=True too takes the installed (split) classes over the folder's copy, as
    # the export's README says.
    for trust in (False, True):
        model = AutoModelForCausalLM.from_pretrained(saved / arch, trust_remote_code=trust).eval()
        assert type(model).__module__ == "ngpt_ds.hf.modeling_ngpt"
        with torch.no_grad():
            assert torch.equal(model(TOKENS).logits, logits[arch])
