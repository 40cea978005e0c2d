"""Crafted files in a `--format hf` folder given to the ngpt_ds lm-eval model (ngpt_ds.hf.as_loaded, which reads such a
folder since this session): each is refused naming the file, before a model of the crafted size is built, and no
Python file of the folder is imported. A config.json of 10^12 parameters (with the weights' recorded config stripped,
so only the weights' own shapes stand against it), negative, fractional and string sizes, an auto_map pointing to
another repository, a tokenizer.json of random bytes or altered, a safetensors header whose offsets or shapes lie,
and a sentencepiece tokenizer= of random bytes (checked in a subprocess: the C++ library must not abort it)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install -e .[eval]")


def _config(folder: Path, **fields) -> None:
    path = folder / "config.json"
    values = json.loads(path.read_text())
    values.update(fields)
    path.write_text(json.dumps(values))


def _strip_recorded_config(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    save_file(load_file(folder / "model.safetensors"), folder / "model.safetensors")


def _header(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + size :])


def _offsets(header):
    header["model.embed.weight"]["data_offsets"] = [0, 10**12]


def _shape(header):
    header["model.embed.weight"]["shape"] = [256, 32]


HUGE = dict(n_embd=8192, hidden_size=8192, n_layer=1000, num_hidden_layers=1000, vocab_size=2**17, mlp_hidden=2**15)
"""About 1.0e12 parameters (each block 4 * 8192^2 + 3 * 8192 * 32768), within ModelConfig's bounds: 4 TB in fp32."""

CASES = {
    "huge": (lambda f: (_config(f, **HUGE), _strip_recorded_config(f)), "model.safetensors: the weights do not match"),
    "negative": (lambda f: _config(f, n_layer=-2, num_hidden_layers=-2), "config.json"),
    "fractional": (lambda f: _config(f, n_embd=32.5, hidden_size=32.5), "config.json"),
    "string": (lambda f: _config(f, n_head="2", num_attention_heads="2"), "config.json"),
    "tokenizer_random": (lambda f: (f / "tokenizer.json").write_bytes(os.urandom(4000)), "tokenizer.json (sha256"),
    "offsets_lie": (lambda f: _header(f, _offsets), "model.safetensors cannot be read as weights"),
    "shape_lies": (lambda f: _header(f, _shape), "model.safetensors cannot be read as weights"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_crafted_file_is_refused_naming_it(case, hf_export_copy):
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer.lm_eval_adapter import NgptLM

    edit, said = CASES[case]
    edit(hf_export_copy)
    with pytest.raises(NgptConfigError) as caught:
        NgptLM(path=str(hf_export_copy), device="cpu")
    message = str(caught.value)
    assert str(hf_export_copy) in message
    assert said in message, message


def test_an_auto_map_pointing_elsewhere_runs_no_code(hf_export_copy):
    from ngpt_ds.infer.lm_eval_adapter import NgptLM

    _config(hf_export_copy, auto_map={"AutoModelForCausalLM": "someone/else--modeling_ngpt.Other"})
    (hf_export_copy / "modeling_ngpt.py").write_text("raise SystemExit('the folder code ran')\n")
    before = set(sys.modules)
    lm = NgptLM(path=str(hf_export_copy), device="cpu")
    assert not [m for m in set(sys.modules) - before if m.startswith("transformers_modules")]
    assert type(lm.model).__module__ == "ngpt_ds.model.ngpt"


def test_a_sentencepiece_tokenizer_of_random_bytes_is_refused_in_words(random_hf_export, tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_bytes(os.urandom(5000))
    code = (
        "import sys\nfrom ngpt_ds.errors import NgptConfigError\nfrom ngpt_ds.infer.lm_eval_adapter import NgptLM\n"
        f"try:\n    NgptLM(path={str(random_hf_export)!r}, device='cpu', tokenizer={str(bad)!r})\n"
        "except NgptConfigError as e:\n    print(e)\n    sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 3, done.stderr[-2000:]  # not -6 (SIGABRT from sentencepiece) nor a traceback
    assert done.stdout.startswith(f"tokenizer {bad} is not a sentencepiece model"), done.stdout
