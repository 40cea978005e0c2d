"""A model folder whose config and weights describe a model larger than the machine holds is refused, in one line
naming the file and the fix, before anything of that size is mapped or allocated.

Faults:
- ngpt_ds.infer.load of an export whose config.json and model.safetensors agree on 2 blocks of width 4096 (2 GiB of
  fp32 weights; a sparse file of that size costs a few bytes on disk, and config.json edits like it are checked
  against the header alone) mapped and read the file, then built the fp32 model beside it: under a 3 GiB address
  space limit it ended in "RuntimeError: unable to mmap 2164625584 bytes", and on a machine without the limit the
  OOM killer ended it (and others). The weights and the model are now counted against the memory available (the
  least of MemAvailable, `ulimit -v`'s headroom and the cgroup's) first.
- from_pretrained of the same folder in transformers' layout: the same RuntimeError from its safe_open.
- from_pretrained of a folder whose config.json says 64 blocks of width 8192 over a weights file holding none:
  transformers allocated every tensor the file lacks (206 GB) before from_pretrained's check named them missing:
  "RuntimeError: ... DefaultCPUAllocator: can't allocate memory". The names and shapes are now compared before.

Each load runs in a child process whose address space is capped 3 GiB above its size at the start, so a failure
here never fills the shared machine's memory.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from random_export import export_random_ngpt
from test_infer_export import trained  # noqa: F401  (session fixture)

from conftest import REPO, cpu_env

HEADROOM = 3 << 30

CHILD = """\
import resource, sys
size = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + int(sys.argv[3]), resource.RLIM_INFINITY))
try:
    if sys.argv[1] == "ngpt_ds":
        import ngpt_ds.infer
        ngpt_ds.infer.load(sys.argv[2], device="cpu")
    else:
        from ngpt_ds.hf import NGPTForCausalLM
        NGPTForCausalLM.from_pretrained(sys.argv[2])
    print("LOADED")
except Exception as err:
    print(type(err).__name__, str(err).splitlines()[0] if str(err) else "")
"""


def _load_capped(tmp_path: Path, kind: str, folder: Path) -> str:
    child = tmp_path / "capped_load.py"
    child.write_text(CHILD)
    proc = subprocess.run(
        [sys.executable, str(child), kind, str(folder), str(HEADROOM)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**cpu_env(), "PYTHONPATH": str(REPO)},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def _sparse_weights(folder: Path, n_layer: int, n_embd: int, n_head: int, prefix: str) -> int:
    """config.json (the model section, or the top level of an hf config) set to these sizes, and model.safetensors
    replaced by a sparse file of their float32 shapes (no recorded config); returns the parameter count."""
    from ngpt_ds.infer.loading import config_shapes
    from ngpt_ds.model import ModelConfig

    path = folder / "config.json"
    config = json.loads(path.read_text())
    model = config["model"] if "model" in config else config
    model.update(n_layer=n_layer, n_embd=n_embd, n_head=n_head)
    path.write_text(json.dumps(config))
    sizes = ModelConfig(arch="ngpt", vocab_size=512, n_layer=n_layer, n_embd=n_embd, n_head=n_head, seq_len=32)
    header, offset = {}, 0
    for name, shape in config_shapes(sizes).items():
        count = 1
        for n in shape:
            count *= n
        header[prefix + name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + 4 * count]}
        offset += 4 * count
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with (folder / "model.safetensors").open("wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        f.truncate(8 + len(text) + offset)  # sparse: nothing of it is on disk
    return offset // 4


AVAILABLE = r"(\d+\.\d\d) GiB is available here"


def test_an_export_of_a_model_larger_than_the_memory_is_refused_before_it_is_read(tmp_path, tiny_dataset):
    folder, _ = export_random_ngpt(tmp_path, tiny_dataset / "tokenizer.model", "ngpt_ds")
    parameters = _sparse_weights(folder, 2, 4096, 32, "")
    assert parameters == 541155840
    line = _load_capped(tmp_path, "ngpt_ds", folder)
    weights = folder / "model.safetensors"
    expected = (
        f"NgptConfigError {weights}: loading its weights (2.02 GiB as read) and the float32 model built from them "
        f"({parameters} parameters) needs about 4.03 GiB of RAM, and {AVAILABLE}; if {folder / 'config.json'} was "
        "edited, restore it or export the checkpoint again; else load it on a machine with more memory"
    )
    match = re.fullmatch(re.escape(expected).replace(re.escape(AVAILABLE), AVAILABLE), line)
    assert match, line
    assert float(match.group(1)) <= 3.0


def test_the_memory_check_passes_a_model_that_fits(tmp_path, tiny_dataset):
    import torch
    from random_export import TOKENS

    from ngpt_ds.infer import load

    folder, logits = export_random_ngpt(tmp_path, tiny_dataset / "tokenizer.model", "ngpt_ds")
    assert _load_capped(tmp_path, "ngpt_ds", folder) == "LOADED"
    loaded = load(folder, device="cpu")
    with torch.no_grad():
        assert torch.equal(loaded.model(TOKENS)[0], logits)


def test_host_memory_available_counts_the_address_space_limit(tmp_path):
    child = tmp_path / "limit.py"
    child.write_text(
        "import resource\n"
        "from ngpt_ds.model.saved_weights import host_memory_available, _proc_number\n"
        "size = _proc_number('/proc/self/status', 'VmSize')\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), resource.RLIM_INFINITY))\n"
        "print(host_memory_available(), size + (1 << 30) - _proc_number('/proc/self/status', 'VmSize'))\n"
    )
    proc = subprocess.run(
        [sys.executable, str(child)], capture_output=True, text=True, env={**cpu_env(), "PYTHONPATH": str(REPO)}
    )
    have, headroom = map(int, proc.stdout.split())
    assert have <= headroom <= 1 << 30


@pytest.fixture
def hf_export(request):
    """A copy of the session's hf export (tests/hf_exports.py), tmp_path/export: the tests alter it. Asked for after
    the skip, so that without transformers the export is not attempted."""
    pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")
    return request.getfixturevalue("hf_export_copy")


def test_from_pretrained_of_a_model_larger_than_the_memory_is_refused_before_the_file_is_mapped(tmp_path, hf_export):
    parameters = _sparse_weights(hf_export, 2, 4096, 32, "model.")
    line = _load_capped(tmp_path, "hf", hf_export)
    weights = hf_export / "model.safetensors"
    expected = (
        f"NgptConfigError {weights}: loading its weights (2064 MiB) and the model built from them ({parameters} "
        f"parameters) needs about 4.03 GiB of RAM, and {AVAILABLE}; the file is damaged or altered, or the model is "
        "too large for this machine"
    )
    assert re.fullmatch(re.escape(expected).replace(re.escape(AVAILABLE), AVAILABLE), line), line


def test_from_pretrained_refuses_tensors_the_file_lacks_before_transformers_allocates_them(tmp_path, hf_export):
    """config.json: 64 blocks of width 8192 (206 GB in fp32); model.safetensors: no tensor at all, no record."""
    config = json.loads((hf_export / "config.json").read_text())
    config.update(n_layer=64, n_embd=8192, n_head=64)
    (hf_export / "config.json").write_text(json.dumps(config))
    text = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    text += b" " * (-len(text) % 8)
    (hf_export / "model.safetensors").write_bytes(len(text).to_bytes(8, "little") + text)
    line = _load_capped(tmp_path, "hf", hf_export)
    assert line == (
        f"NgptConfigError {hf_export / 'model.safetensors'}: the weights do not match config.json (missing "
        "model.blocks.0.attn.out.weight, model.blocks.0.attn.qkv.weight, model.blocks.0.attn.s_qk.param, "
        "model.blocks.0.attn_alpha.param, model.blocks.0.mlp.down.weight, model.blocks.0.mlp.s_u.param, "
        "model.blocks.0.mlp.s_v.param, model.blocks.0.mlp.up_gate.weight …); the file is damaged or from another "
        "model. Export the checkpoint again"
    )


def test_a_checkpoint_larger_than_the_memory_is_refused_before_its_files_are_read(trained, monkeypatch):  # noqa: F811
    """The same check for a trainer checkpoint: what reading its DeepSpeed files holds (loading.held_while_read: the
    model states whole, a third of each optimizer file), against a host memory imitated one byte short of it
    (saved_weights.host_memory_available); none of them is read."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import load, loading
    from ngpt_ds.model import saved_weights

    checkpoint = trained["checkpoint"]
    files = {f.name: f.stat().st_size for f in checkpoint.iterdir() if f.suffix == ".pt"}
    stored = sum(size // 3 if name.endswith("_optim_states.pt") else size for name, size in files.items())
    assert any(name.endswith("_optim_states.pt") for name in files) and stored < sum(files.values())
    read: list = []
    monkeypatch.setattr(loading, "read_checkpoint_weights", lambda *a: read.append(a))
    monkeypatch.setattr(saved_weights, "host_memory_available", lambda: stored - 1)
    with pytest.raises(NgptConfigError) as caught:
        load(checkpoint, device="cpu")
    assert str(caught.value) == (
        f"{checkpoint}: loading its weights ({stored / 2**30:.2f} GiB as read) needs about {stored / 2**30:.2f} GiB "
        f"of RAM, and {(stored - 1) / 2**30:.2f} GiB is available here; if {checkpoint / 'config.yaml'} was edited, "
        "restore it; else load it on a machine with more memory"
    )
    assert read == []
