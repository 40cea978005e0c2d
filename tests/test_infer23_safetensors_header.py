"""A crafted or damaged model.safetensors in an export is one error naming the file and the fix.

An attacker's or a broken copy's header: a length of 2^62, a length past the end of the file, a file cut short,
offsets past the data, a dtype string safetensors does not know, a shape whose size overflows, bytes that are
not UTF-8, trailing bytes, and (new with the config record) a record nested 200000 deep. None allocates what the
header claims or stops with a traceback. These pass on the commit before tests/test_infer23_config_record.py's
fix too, except the record case (no record was read then): no fault was found in the header handling.
"""

import json
import shutil
import struct

import pytest
from test_infer23_config_record import recorded_export  # noqa: F401  (module fixture)

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.infer import load

CAUSES = {
    "huge_length": "header too large",
    "length_past_file": "invalid header length",
    "cut_short": "header too small",
    "offset_past_data": "invalid shape, data type, or offset for tensor",
    "unknown_dtype": "invalid JSON in header: unknown variant `Q9`",
    "overflowing_shape": "overflow computing buffer size from shape",
    "not_utf8": "invalid UTF-8 in header",
    "trailing_bytes": "incomplete metadata, file not fully covered",
}


def crafted(raw: bytes, case: str) -> bytes:
    length = struct.unpack("<Q", raw[:8])[0]
    header, data = json.loads(raw[8 : 8 + length]), raw[8 + length :]
    name = next(k for k in header if k != "__metadata__")

    def packed(h: dict) -> bytes:
        text = json.dumps(h).encode()
        return struct.pack("<Q", len(text)) + text + data

    if case == "huge_length":
        return struct.pack("<Q", 2**62) + raw[8:]
    if case == "length_past_file":
        return struct.pack("<Q", len(raw) + 10) + raw[8:]
    if case == "cut_short":
        return raw[:5]
    if case == "offset_past_data":
        header[name]["data_offsets"] = [0, 10**12]
    elif case == "unknown_dtype":
        header[name]["dtype"] = "Q9"
    elif case == "overflowing_shape":
        header[name]["shape"] = [2**40, 2**40]
    elif case == "not_utf8":
        return struct.pack("<Q", 4) + b"\xff\xfe{}" + data
    elif case == "trailing_bytes":
        return raw + bytes(64)
    elif case == "deep_record":
        header["__metadata__"]["ngpt_ds_model_config"] = "[" * 200_000
    return packed(header)


@pytest.mark.parametrize("case", sorted(CAUSES))
def test_a_crafted_safetensors_header_is_one_error_naming_the_file(recorded_export, tmp_path, case):  # noqa: F811
    folder, _ = recorded_export
    copy = tmp_path / case
    shutil.copytree(folder, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(crafted(weights.read_bytes(), case))
    with pytest.raises(NgptConfigError) as err:
        load(copy, device="cpu")
    message = str(err.value)
    assert message.startswith(f"{weights} cannot be read (Error while deserializing header: {CAUSES[case]}")
    assert message.endswith("); export the checkpoint again")


def test_a_record_nested_too_deep_for_json_is_named(recorded_export, tmp_path):  # noqa: F811
    """Fault guarded: json.loads of 200000 '[' raises RecursionError, which must not escape as a traceback."""
    folder, _ = recorded_export
    copy = tmp_path / "deep"
    shutil.copytree(folder, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(crafted(weights.read_bytes(), "deep_record"))
    with pytest.raises(NgptConfigError) as err:
        load(copy, device="cpu")
    assert str(err.value) == (
        f"{weights}: its recorded model config (ngpt_ds_model_config) is not a JSON mapping; the file was altered. "
        "Export the checkpoint again"
    )
