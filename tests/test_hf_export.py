"""`launch/export.py --format hf`: the trained tiny nGPT (test_infer_export's ZeRO-2 x 2-rank run) as a
Hugging Face transformers folder, loaded through the Auto classes with ngpt_ds registered and, in a
process where ngpt_ds cannot be imported, through the folder's own code (trust_remote_code).
Logits are compared bit for bit with the live model's, greedy `generate` token for token with
launch/generate.py, the tokenizer id for id with sentencepiece."""

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_infer_export import exported, trained  # noqa: F401  (session fixtures)

from ngpt_ds.errors import NgptConfigError

from conftest import REPO, cpu_env, run

PROMPT = "The class statement"
NEW_TOKENS = 12  # past the 32-token context of the tiny model only with a long prompt; here 3 + 12 tokens


@pytest.fixture(scope="session")
def hf_exported(trained) -> Path:  # noqa: F811
    """The run exported with the command line, `--format hf`."""
    folder = trained["root"] / "export_hf"
    if not (folder / "config.json").is_file():
        proc = run([sys.executable, REPO / "launch/export.py", trained["out"], "--out", folder, "--format", "hf"])
        assert "for Hugging Face transformers" in proc.stdout
    return folder


def _hf_greedy(model, prompt_ids: list[int], **kwargs) -> list[int]:
    out = model.generate(
        torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, **kwargs
    )
    return out[0, len(prompt_ids) :].tolist()


def test_folder_layout_config_and_generation_config(hf_exported, trained):  # noqa: F811
    names = sorted(p.name for p in hf_exported.iterdir())
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "configuration_ngpt.py",
        "modeling_ngpt.py",
        "README.md",
    } <= set(names)
    assert not [n for n in names if n.startswith(".")]
    config = json.loads((hf_exported / "config.json").read_text())
    assert config["model_type"] == "ngpt" and config["architectures"] == ["NGPTForCausalLM"]
    assert config["auto_map"] == {
        "AutoConfig": "configuration_ngpt.NGPTConfig",
        "AutoModel": "modeling_ngpt.NGPTModel",
        "AutoModelForCausalLM": "modeling_ngpt.NGPTForCausalLM",
    }
    assert (config["n_layer"], config["n_embd"], config["n_head"], config["seq_len"], config["vocab_size"]) == (
        2,
        32,
        2,
        32,
        512,
    )
    assert config["ngpt_ds_export"]["training"]["step"] == 6 and config["eos_token_id"] == 2
    generation = json.loads((hf_exported / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and generation["pad_token_id"] == 2
    # The copied code imports nothing of ngpt_ds (only relative imports), and the README explains trusting it.
    for path in hf_exported.glob("*.py"):
        assert "ngpt_ds." not in "".join(
            line for line in path.read_text().splitlines(True) if line.lstrip().startswith(("from ", "import "))
        ), path.name
    readme = (hf_exported / "README.md").read_text()
    assert "trust_remote_code=True" in readme and "with your user's rights" in readme


def test_auto_model_with_ngpt_ds_imported_gives_the_live_logits_bit_for_bit(hf_exported, exported, trained):  # noqa: F811
    from transformers import AutoConfig, AutoModelForCausalLM

    import ngpt_ds  # noqa: F401  (registers model_type "ngpt" with the Auto classes)
    from ngpt_ds.hf import NGPTConfig, NGPTForCausalLM
    from ngpt_ds.infer import load_export

    assert AutoConfig.for_model("ngpt").__class__ is NGPTConfig
    model = AutoModelForCausalLM.from_pretrained(hf_exported)
    assert type(model) is NGPTForCausalLM and not model.training
    live = torch.load(trained["live"])
    with torch.no_grad():
        logits = model(live["tokens"]).logits
    assert torch.equal(logits, live["logits"])
    assert torch.equal(logits, load_export(exported).model(live["tokens"])[0].detach())
    assert live["logits"].std() > 0.05  # a trained model, not a constant


REMOTE = """\
import json, sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name == "ngpt_ds" or name.startswith("ngpt_ds."):
            raise ModuleNotFoundError("No module named " + repr(name))
sys.meta_path.insert(0, NotInstalled())  # the editable install's finder comes after this one
try:
    import ngpt_ds
    sys.exit("ngpt_ds is importable")
except ModuleNotFoundError:
    pass
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, live, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
ids = tokenizer({prompt!r}, return_tensors="pt").input_ids
greedy = model.generate(ids, max_new_tokens={new}, do_sample=False, eos_token_id=None)[0, ids.shape[1]:]
with torch.no_grad():
    logits = model(torch.load(live)["tokens"]).logits
torch.save({{"logits": logits, "greedy": greedy.tolist(), "module": type(model).__module__,
            "ngpt_ds_modules": [m for m in sys.modules if m == "ngpt_ds" or m.startswith("ngpt_ds.")]}}, out)
"""


def test_trust_remote_code_without_ngpt_ds_gives_the_same_logits_and_tokens(hf_exported, exported, trained, tmp_path):  # noqa: F811
    from ngpt_ds.infer import generate, load_export

    script = tmp_path / "remote.py"
    script.write_text(REMOTE.format(prompt=PROMPT, new=NEW_TOKENS))
    env = cpu_env(HF_HUB_OFFLINE=1, HF_MODULES_CACHE=tmp_path / "modules")
    env.pop("PYTHONPATH")
    run([sys.executable, script, hf_exported, trained["live"], tmp_path / "out.pt"], cwd=tmp_path, env=env)
    result = torch.load(tmp_path / "out.pt")
    assert result["module"].startswith("transformers_modules.") and result["ngpt_ds_modules"] == []
    assert torch.equal(result["logits"], torch.load(trained["live"])["logits"])
    loaded = load_export(exported)
    reference = generate(loaded.model, loaded.tokenizer, PROMPT, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
    assert result["greedy"] == reference.new_ids


def test_greedy_generate_equals_launch_generate_token_for_token(hf_exported, exported):  # noqa: F811
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import ngpt_ds  # noqa: F401
    from ngpt_ds.infer import generate, load_export

    loaded = load_export(exported)
    reference = generate(loaded.model, loaded.tokenizer, PROMPT, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
    proc = run(
        [
            sys.executable,
            REPO / "launch/generate.py",
            exported,
            "--prompt",
            PROMPT,
            "--greedy",
            "--max-new-tokens",
            NEW_TOKENS,
            "--ignore-eos",
            "--no-echo",
            "--device",
            "cpu",
        ]
    )
    assert proc.stdout == reference.text + "\n"  # the command line prints what generate() returns
    assert f"[{NEW_TOKENS} tokens" in proc.stderr

    model = AutoModelForCausalLM.from_pretrained(hf_exported)
    tokenizer = AutoTokenizer.from_pretrained(hf_exported)
    prompt_ids = tokenizer(PROMPT).input_ids
    assert prompt_ids == reference.prompt_ids
    seen = []  # positions fed to ngpt_ds's model per step: the prompt once, then one at a time
    model.model.hidden_states = _recording(model.model.hidden_states, seen)
    new_ids = _hf_greedy(model, prompt_ids)
    assert new_ids == reference.new_ids
    assert seen == [len(prompt_ids)] + [1] * (NEW_TOKENS - 1)  # the KV cache is used
    assert tokenizer.decode(prompt_ids + new_ids)[len(PROMPT) :] == reference.text
    assert len(set(new_ids)) > 1  # not one token repeated
    # Without the cache: every step reruns the whole sequence, the same tokens.
    assert _hf_greedy(model, prompt_ids, use_cache=False) == reference.new_ids


def _recording(hidden_states, seen: list):
    def wrapped(token_ids, cache=None):
        seen.append(token_ids.shape[1])
        return hidden_states(token_ids, cache)

    return wrapped


def test_sampling_with_the_cache_matches_sampling_without_it(hf_exported):
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401

    model = AutoModelForCausalLM.from_pretrained(hf_exported)
    prompt = torch.tensor([[5, 77, 300, 12]])
    runs = {}
    for use_cache in (True, False):
        torch.manual_seed(3)
        runs[use_cache] = model.generate(
            prompt, max_new_tokens=20, do_sample=True, temperature=1.5, top_k=50, eos_token_id=None, use_cache=use_cache
        )[0, 4:].tolist()
    assert len(runs[True]) == 20 and runs[True] == runs[False]
    torch.manual_seed(4)
    other = model.generate(prompt, max_new_tokens=20, do_sample=True, temperature=1.5, top_k=50, eos_token_id=None)[
        0, 4:
    ].tolist()
    assert other != runs[True]  # sampled, not greedy: another seed gives other tokens


def test_auto_tokenizer_round_trips_like_sentencepiece(hf_exported, trained):  # noqa: F811
    from transformers import AutoTokenizer

    from ngpt_ds.data.tokenizer import Tokenizer

    hf = AutoTokenizer.from_pretrained(hf_exported)
    sp = Tokenizer.load(trained["data"] / "tokenizer.model")
    texts = [json.loads(line)["text"] for line in (trained["data"].parent / "corpus.jsonl").read_text().splitlines()]
    texts += ["", " ", "  two  leading", "\n\ttabs\n", "ünïcödé 日本語 😀", "</s> <s> <unk> are text here", "x" * 300]
    assert len(texts) > 50
    for text in texts:
        ids = sp.encode(text)
        assert hf(text).input_ids == ids, text[:60]
        assert hf.decode(ids) == sp.decode(ids) == text, text[:60]  # ngpt_ds's tokenizer round-trips exactly
    assert hf.eos_token_id == sp.eos_id == 2 and hf.bos_token_id is None and hf.unk_token_id == 0


def test_gpt_baseline_pair_loads_through_the_auto_classes(tmp_path, trained):  # noqa: F811
    """The GPT baseline's export, through the Auto classes with ngpt_ds registered and, like the nGPT one above,
    through the folder's own code in a process that cannot import ngpt_ds."""
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401
    from ngpt_ds.data.tokenizer import Tokenizer
    from ngpt_ds.hf import GPTBaselineForCausalLM
    from ngpt_ds.hf.export import write_hf_export
    from ngpt_ds.infer import GREEDY, LoadedModel, generate, generate_ids
    from ngpt_ds.model import ModelConfig, build_model

    torch.manual_seed(0)
    config = ModelConfig(arch="gpt", vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    model = build_model(config).eval()
    tok = Tokenizer.load(trained["data"] / "tokenizer.model")
    loaded = LoadedModel(
        model=model, config=config, tokenizer=tok, tokenizer_sha256="-", source=tmp_path, kind="export"
    )
    folder = tmp_path / "gpt_hf"
    folder.mkdir()
    write_hf_export(loaded, folder, name="gpt_hf")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "ngpt_gpt_baseline"
    hf = AutoModelForCausalLM.from_pretrained(folder)
    assert type(hf) is GPTBaselineForCausalLM
    tokens = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(hf(tokens).logits, model(tokens)[0])
        prompt = [5, 77, 300]
        expected = [int(t) for t in generate_ids(model, prompt, NEW_TOKENS, GREEDY)]
        logits = model(tokens)[0]
    assert _hf_greedy(hf, prompt) == expected

    torch.save({"tokens": tokens}, tmp_path / "live.pt")
    script = tmp_path / "remote.py"
    script.write_text(REMOTE.format(prompt=PROMPT, new=NEW_TOKENS))
    env = cpu_env(HF_HUB_OFFLINE=1, HF_MODULES_CACHE=tmp_path / "modules")
    env.pop("PYTHONPATH")
    run([sys.executable, script, folder, tmp_path / "live.pt", tmp_path / "out.pt"], cwd=tmp_path, env=env)
    result = torch.load(tmp_path / "out.pt")
    assert result["module"].startswith("transformers_modules.") and result["ngpt_ds_modules"] == []
    assert torch.equal(result["logits"], logits)
    reference = generate(loaded.model, tok, PROMPT, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
    assert result["greedy"] == reference.new_ids


def test_loss_follows_the_transformers_label_convention(hf_exported):
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401

    model = AutoModelForCausalLM.from_pretrained(hf_exported)
    tokens = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(2))
    labels = tokens.clone()
    labels[0, 5] = -100
    with torch.no_grad():
        out = model(tokens, labels=labels)
        logits, _ = model.model(tokens)
    targets = tokens[:, 1:].clone()
    targets[0, 4] = -1
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-1)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_exported_tokenizer_pads_prompts_on_the_left_for_generate(hf_exported):
    """Fault: the exported tokenizer named no pad token, so tokenizer(prompts, padding=True) raised "Asking to
    pad but the tokenizer does not have a padding token", and padded on the right, where generate() would
    append after the padding. It pads with </s> (the generation config's pad id) on the left: each prompt's
    greedy continuation in a batch equals its own (the model's padding support: tests/test_hf_padding.py)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import ngpt_ds  # noqa: F401

    model, tokenizer = AutoModelForCausalLM.from_pretrained(hf_exported), AutoTokenizer.from_pretrained(hf_exported)
    prompts = ["the model", "a longer prompt than the first one"]
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    assert tokenizer.pad_token_id == model.generation_config.pad_token_id == tokenizer.eos_token_id
    shortest = int(batch["attention_mask"].sum(-1).min())
    assert batch["attention_mask"][0].tolist()[-shortest:] == [1] * shortest  # real tokens at the right end
    together = model.generate(**batch, max_new_tokens=4, do_sample=False)[:, batch["input_ids"].shape[1] :]
    for row, prompt in enumerate(prompts):
        alone = tokenizer(prompt, return_tensors="pt")
        own = model.generate(**alone, max_new_tokens=4, do_sample=False)[:, alone["input_ids"].shape[1] :]
        assert together[row].tolist() == own[0].tolist(), prompt


def test_import_ngpt_ds_does_not_import_transformers():
    code = textwrap.dedent("""\
        import sys, ngpt_ds
        assert "transformers" not in sys.modules
        from transformers import AutoConfig
        print(type(AutoConfig.for_model("ngpt")).__module__)
    """)
    proc = run([sys.executable, "-c", code])
    assert proc.stdout.strip() == "ngpt_ds.hf.configuration_ngpt"
    # transformers imported first: `import ngpt_ds` registers right away.
    code = textwrap.dedent("""\
        from transformers import AutoModelForCausalLM
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
        import ngpt_ds
        from ngpt_ds.hf import GPTBaselineConfig, NGPTConfig
        print(MODEL_FOR_CAUSAL_LM_MAPPING[NGPTConfig].__name__, MODEL_FOR_CAUSAL_LM_MAPPING[GPTBaselineConfig].__name__)
    """)
    proc = run([sys.executable, "-c", code])
    assert proc.stdout.split() == ["NGPTForCausalLM", "GPTBaselineForCausalLM"]


def test_transformers_is_pinned_to_the_tested_range():
    import re

    import transformers
    from packaging.specifiers import SpecifierSet

    setup = (REPO / "setup.py").read_text()
    (pin,) = set(re.findall(r'"transformers([<>=!,.0-9]+)"', setup))
    assert transformers.__version__ in SpecifierSet(pin)  # the tests run on a release the pin allows
    assert f'"hf": ["transformers{pin}"' in setup  # the extra's first requirement (tokenizers, protobuf follow)


def test_overwrite_replaces_an_hf_export_and_nothing_else(trained, tmp_path):  # noqa: F811
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import export_model

    out = tmp_path / "hf"
    export_model(trained["checkpoint"], out, format="hf")
    first = (out / "model.safetensors").read_bytes()
    with pytest.raises(NgptConfigError, match="already exists"):
        export_model(trained["checkpoint"], out, format="hf")
    export_model(trained["checkpoint"], out, format="hf", overwrite=True)  # recognized as an export
    assert (out / "model.safetensors").read_bytes() == first
    other = tmp_path / "not_an_export"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(NgptConfigError):
        export_model(trained["checkpoint"], other, format="hf", overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(NgptConfigError, match="not one of ngpt_ds, hf"):
        export_model(trained["checkpoint"], tmp_path / "x", format="onnx")


def test_an_export_given_where_the_other_is_expected_is_named_as_such(hf_exported, exported, tmp_path):  # noqa: F811
    """Faults: generate/evaluate on a `--format hf` export said 'format = None ... not a folder written by
    launch/export.py', though export.py wrote it; export.py given an export said it was 'neither an exported
    model (config.json + model.safetensors) nor ...', though it is one."""
    from ngpt_ds.infer import export_model, load

    with pytest.raises(NgptConfigError) as caught:
        load(hf_exported, device="cpu")
    assert str(caught.value).startswith(f"{hf_exported} is a transformers export (export.py --format hf): load it ")
    # The exact lm-eval command that reads it (ngpt-lm-eval's ngpt_ds model reads --format ngpt_ds exports only).
    assert f"(lm_eval --model hf --model_args pretrained={hf_exported},trust_remote_code=True --tasks ...)" in str(
        caught.value
    )
    with pytest.raises(NgptConfigError) as caught:
        export_model(exported, tmp_path / "again")
    assert str(caught.value).startswith(f"{exported} is an exported model, and export.py reads a checkpoint ")
    assert not (tmp_path / "again").exists()


_WRITE_CODE = """
import sys
from pathlib import Path
from ngpt_ds.hf.export import write_code
print(",".join(write_code(Path(sys.argv[1]))))
"""


def test_the_modeling_code_is_copied_as_utf8_under_an_ascii_locale(tmp_path):
    """Fault (review): write_code read the package's code files with the locale's encoding, so under an ASCII
    locale (LC_ALL=C without Python's UTF-8 mode) the export stopped with a UnicodeDecodeError: modeling_ngpt.py,
    model/layers.py and others hold non-ASCII characters (12 bytes in layers.py)."""
    import os
    import subprocess

    from ngpt_ds.hf.export import PACKAGE_ROOT, _code_closure

    env = {**cpu_env(), "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    env.pop("PYTHONIOENCODING", None)
    proc = subprocess.run(
        [sys.executable, "-c", _WRITE_CODE, str(tmp_path)], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = proc.stdout.strip().split(",")
    assert "modeling_ngpt.py" in names and "layers.py" in names
    layers = next(rel for rel in _code_closure() if rel.name == "layers.py")
    source = (PACKAGE_ROOT / layers).read_text(encoding="utf-8")
    assert any(ord(c) > 127 for c in source)  # the file this test needs to hold non-ASCII text
    copied = (tmp_path / "layers.py").read_text(encoding="utf-8")
    assert [line for line in copied.splitlines() if "import" not in line] == [
        line for line in source.splitlines() if "import" not in line
    ]
    assert os.listdir(tmp_path) and len(os.listdir(tmp_path)) == len(names)
