"""A crafted weights file in an `--format hf` folder is refused with one error naming the file and the fix.

Fault: from_pretrained (ngpt_ds installed, or the export's own copy with trust_remote_code) first reads every weights
file's header itself (_NgptDsPreTrainedModel._load_pretrained_model, to check dtypes, shapes and the recorded config),
and a model.safetensors whose header safetensors refuses (a header length past the end of the file, tensor offsets
that overlap, a header that is no JSON mapping, an empty file) ended in a bare `SafetensorError` traceback naming no
file; a pytorch_model.bin whose pickle calls os.system ended in torch's UnpicklingError, whose advice is to load it
with weights_only=False, which runs the call. Both are now an NgptConfigError naming the file
(saved_weights.unreadable_weights); nothing from the pickle runs, as before.
"""

from __future__ import annotations

import json
import struct

import pytest

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

SAFETENSORS_FIX = (
    "the file is damaged, altered or from another program: copy the whole folder again, or export the checkpoint again"
)


def _load(folder):
    from transformers import AutoModelForCausalLM

    import ngpt_ds  # noqa: F401  (registers the classes)

    return AutoModelForCausalLM.from_pretrained(str(folder))


def _header(path):
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _write(path, header, data):
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _length_past_the_file(path):
    raw = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 1 << 40) + raw[8:])


def _overlapping_offsets(path):
    header, data = _header(path)
    second = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])[1]
    header[second]["data_offsets"] = [o - 4 for o in header[second]["data_offsets"]]  # into the first tensor's bytes
    _write(path, header, data)


def _not_a_mapping(path):
    path.write_bytes(struct.pack("<Q", 8) + b"[1, 2]  ")


def _empty(path):
    path.write_bytes(b"")


@pytest.mark.parametrize(
    ("craft", "reason"),
    [
        (_length_past_the_file, "header too large"),
        (_overlapping_offsets, "invalid offset for tensor `model.blocks.0.attn.qkv.weight`"),
        (
            _not_a_mapping,
            "invalid JSON in header: invalid type: sequence, expected struct HashMetadata at line 1 column 0",
        ),
        (_empty, "header too small"),
    ],
    ids=["length_past_file", "overlapping_offsets", "not_a_mapping", "empty"],
)
def test_red30_crafted_safetensors_header_names_the_file_not_a_bare_traceback(hf_export_copy, craft, reason):
    from ngpt_ds.errors import NgptConfigError

    weights = hf_export_copy / "model.safetensors"
    craft(weights)
    with pytest.raises(NgptConfigError) as caught:
        _load(hf_export_copy)
    assert str(caught.value) == (
        f"{weights} cannot be read as weights (SafetensorError: Error while deserializing header: {reason}); "
        f"{SAFETENSORS_FIX}"
    )


def test_red30_pickled_bin_calling_os_system_is_refused_naming_the_file_and_nothing_runs(hf_export_copy, tmp_path):
    from ngpt_ds.errors import NgptConfigError

    ran = tmp_path / "ran"
    (hf_export_copy / "model.safetensors").unlink()
    weights = hf_export_copy / "pytorch_model.bin"
    weights.write_bytes(b"\x80\x04cos\nsystem\n(V" + f"touch {ran}".encode() + b"\ntR.")
    with pytest.raises(NgptConfigError) as caught:
        _load(hf_export_copy)
    assert str(caught.value) == (
        f"{weights}: this pickled weights file needs os.system, which is not a tensor or plain data; unpickling it "
        "could run code, so nothing of it was loaded (and nothing ran). Never load it with weights_only=False: use "
        "the export's model.safetensors, or export the checkpoint again"
    )
    assert not ran.exists()
