"""The `--format hf` export: a folder in transformers' standard layout.

    OUT/
      config.json              NGPTConfig / GPTBaselineConfig: model_type, auto_map, every ModelConfig field
      model.safetensors        fp32 weights (ngpt_ds's state_dict names under `model.`); its header's __metadata__
                               records the model config (ngpt_ds_model_config), which from_pretrained checks
                               config.json against (ngpt_ds.hf.recorded_config)
      generation_config.json   eos = pad = `</s>`
      tokenizer.json, tokenizer_config.json   the sentencepiece model as a transformers tokenizer
      configuration_ngpt.py, modeling_ngpt.py and the ngpt_ds.model files they import, imports made
                               relative: `trust_remote_code=True` runs them without ngpt_ds installed
      README.md

The caller (ngpt_ds.infer.export.export_model) writes into a temporary folder and renames it.
"""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import ngpt_ds
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.hf.configuration_ngpt import CONFIGS
from ngpt_ds.hf.modeling_ngpt import MODELS
from ngpt_ds.hf.recorded_config import add_metadata  # noqa: F401  # re-exported: tests import it from here
from ngpt_ds.hf.tokenizer import PROBE_TEXTS, build_hf_tokenizer, check_same_tokens
from ngpt_ds.model.saved_weights import TOKENIZER_JSON_SHA256

if TYPE_CHECKING:
    from ngpt_ds.infer.loading import LoadedModel

HF_MARKER = "ngpt_ds_export"
"""The config.json key that carries ngpt_ds's provenance (and marks the folder as an ngpt_ds export)."""
PACKAGE_ROOT = Path(ngpt_ds.__file__).parent
CODE_ENTRY = ("hf/configuration_ngpt.py", "hf/modeling_ngpt.py")
CODE_ENTRY_NAMES = tuple(Path(p).name for p in CODE_ENTRY)
_IMPORT = re.compile(r"^(\s*)from ngpt_ds\.((?:\w+\.)*)(\w+) import ", re.MULTILINE)
_IMPORT_PACKAGE = re.compile(r"^([ \t]*)from ngpt_ds import (\w+(?:, \w+)*)[ \t]*$", re.MULTILINE)

README = """\
# {name}

{article} {arch_name} language model trained with ngpt_ds, exported for Hugging Face transformers from
`{checkpoint}` (step {step}): {n_layer} layers, d_model {n_embd}, {n_head} heads, trained context
{seq_len} tokens, vocabulary {vocab_size} (sentencepiece, converted to `tokenizer.json`; `</s>` ends a
document, there is no BOS).

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("{folder}", trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained("{folder}", trust_remote_code=True)  # it reads config.json
    ids = tokenizer("In the beginning", return_tensors="pt").input_ids
    print(tokenizer.decode(model.generate(ids, max_new_tokens=40, do_sample=False)[0]))

    lm_eval --model hf --model_args pretrained={folder},trust_remote_code=True --tasks arc_easy

With ngpt_ds installed, `import ngpt_ds` registers model_type `{model_type}` with the Auto classes and
`trust_remote_code` is not needed: the installed ngpt_ds code is used instead of the copy here.

## What `trust_remote_code=True` runs

transformers has no built-in nGPT, so the model's code is in this folder: `configuration_ngpt.py`,
`modeling_ngpt.py` and the ngpt_ds model files they import ({code_files}), copies of ngpt_ds
{version} with their imports made relative. `trust_remote_code=True` makes transformers import and
execute these Python files with your user's rights, like any program you run. Read them first (they
only define torch modules and import torch, transformers, pyyaml and the standard library), and
when the folder comes from someone else pin its revision, so that the code you read is the code
that runs.

## Limits

Padded batches work: `tokenizer(prompts, padding=True, return_tensors="pt")` pads on the left with `</s>`,
and `attention_mask` keeps attention off the padding and sets the positions, so each prompt gets what it
gets alone. The KV cache is transformers' DynamicCache.
"""


def _code_closure() -> list[Path]:
    """The package files the HF wrapper imports, transitively (relative paths under ngpt_ds/)."""
    todo, seen = list(CODE_ENTRY), []
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.append(rel)
        for node in ast.walk(ast.parse((PACKAGE_ROOT / rel).read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ngpt_ds."):
                todo.append(node.module.removeprefix("ngpt_ds.").replace(".", "/") + ".py")
            elif isinstance(node, ast.ImportFrom) and node.module == "ngpt_ds":  # from ngpt_ds import yaml_safe
                for alias in node.names:
                    if alias.asname or not (PACKAGE_ROOT / f"{alias.name}.py").is_file():
                        raise AssertionError(f"ngpt_ds/{rel}: the export rewrites `from ngpt_ds import module` only")
                    todo.append(f"{alias.name}.py")
            elif isinstance(node, ast.Import) and any(a.name.startswith("ngpt_ds") for a in node.names):
                raise AssertionError(f"ngpt_ds/{rel}: use `from ngpt_ds.x import y`; the export rewrites only those")
    return [Path(rel) for rel in sorted(seen)]


def _package_import(match: re.Match) -> str:
    """`from ngpt_ds import m` as `from . import m`, after a `from .m import` line: transformers copies into
    its modules cache only the files a module imports in that form (dynamic_module_utils.get_relative_imports),
    so `from . import m` alone failed there ('cannot import name m')."""
    indent, names = match.group(1), match.group(2).split(", ")
    seen = "".join(
        f"{indent}from .{n} import __name__ as _{n}_module  # noqa: F401  (for transformers)\n" for n in names
    )
    return f"{seen}{indent}from . import {match.group(2)}"


def write_code(folder: Path) -> list[str]:
    """Copy the modeling code into `folder`, flat, with `from ngpt_ds.a.b import` made `from .b import` (and
    `from ngpt_ds import m` `from . import m`)."""
    files = _code_closure()
    names = [p.name for p in files]
    if len(set(names)) != len(names):
        raise AssertionError(f"the exported modeling files must have distinct names: {names}")
    for rel in files:
        text = _IMPORT.sub(
            lambda m: f"{m.group(1)}from .{m.group(3)} import ", (PACKAGE_ROOT / rel).read_text(encoding="utf-8")
        )
        text = _IMPORT_PACKAGE.sub(_package_import, text)
        if re.search(r"^\s*(from|import) ngpt_ds\b", text, re.MULTILINE):
            raise AssertionError(f"ngpt_ds/{rel}: an import of ngpt_ds the export cannot make relative")
        (folder / rel.name).write_text(text, encoding="utf-8")
    return names


def write_hf_export(loaded: LoadedModel, folder: Path, *, name: str) -> dict[str, torch.Tensor]:
    """Write the transformers layout of `loaded` (an ngpt_ds.infer.LoadedModel) into the empty `folder`.
    Returns the state_dict written (keys as transformers names them), for the read-back check."""
    arch = loaded.config.arch
    tok = loaded.tokenizer
    # The bytes loaded and checked (against the model's sha256), not the file at the path now.
    hf_tokenizer = build_hf_tokenizer(tok.path, tok.model_bytes)
    check_same_tokens(hf_tokenizer, tok, PROBE_TEXTS)
    config_class = CONFIGS[arch]
    model_class = MODELS[arch]
    eos = tok.eos_id if tok.eos_id >= 0 else None
    hf_tokenizer.save_pretrained(folder)  # first: config.json records its tokenizer.json's sha256
    tokenizer_json = hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()
    config = config_class.from_model_config(
        loaded.config,
        eos_token_id=eos,
        pad_token_id=eos,
        auto_map=model_class.auto_map(),
        **{
            HF_MARKER: {
                "format_version": 1,
                "tokenizer_sha256": loaded.tokenizer_sha256,
                TOKENIZER_JSON_SHA256: tokenizer_json,  # checked where config.json is read (check_tokenizer_files)
                "ngpt_ds_version": ngpt_ds.__version__,
                "training": loaded.info,
            }
        },
    )
    model = model_class(config)
    model.model.load_state_dict(loaded.model.state_dict())
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = eos
    # save_pretrained records the model config in the weights' header, the native export's record and key
    # (ngpt_ds.hf.recorded_config): from_pretrained refuses a config.json edited after the export.
    model.save_pretrained(folder)
    code_files = write_code(folder)
    (folder / "README.md").write_text(
        README.format(
            name=name,
            **loaded.card_fields(),
            folder=name,
            model_type=config_class.model_type,
            code_files=", ".join(f"`{n}`" for n in code_files if n not in CODE_ENTRY_NAMES),
            version=ngpt_ds.__version__,
        ),
        encoding="utf-8",
    )
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def verify_hf_export(folder: Path, state: dict[str, torch.Tensor], arch: str) -> None:
    """Read the folder back with transformers; the weights must be bit-identical to what was written."""
    reloaded = MODELS[arch].from_pretrained(folder).state_dict()
    if set(reloaded) != set(state):
        raise NgptConfigError(f"export to {folder}: the weights read back name other tensors than were written")
    for key, tensor in reloaded.items():
        if not torch.equal(tensor, state[key]):
            raise NgptConfigError(
                f"export to {folder}: {key} reads back different from what was written "
                "(disk full or a failing file system?)"
            )
