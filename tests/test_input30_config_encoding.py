"""Config files that are not UTF-8 (input30): a YAML or DeepSpeed JSON saved by Windows PowerShell's `>` (UTF-16 with
a byte-order mark) or by a Latin-1 editor was refused as "cannot be read as YAML (UnicodeDecodeError: 'utf-8' codec
can't decode byte 0xe9 in position 73: invalid continuation byte)": the file named, but neither the place nor the
fix. Now one line with the encoding (or the bad byte's line and column) and "save it as UTF-8"."""

import sys

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.config import load_yaml
from ngpt_ds.train.ds_config import load_ds_config

from conftest import REPO, run, tiny_ngpt, tiny_train, write_ds_config, write_yaml

YAML_TEXT = "model:\n  arch: ngpt\n# café\ntrain:\n  max_steps: 2\n"
JSON_TEXT = '{\n  "train_micro_batch_size_per_gpu": 4,\n  "comment": "café"\n}\n'


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_configs_named_with_the_fix(tmp_path, encoding):
    """Fault: a config saved as UTF-16/32 (PowerShell 5's `echo ... > c.yaml`) said only 'UnicodeDecodeError ...
    byte 0xff in position 0'."""
    name = "UTF-32" if "32" in encoding else "UTF-16"
    bom = {"utf-16": "", "utf-16-be": "\ufeff", "utf-32": ""}[encoding]  # Python's utf-16/32 write their own mark
    yaml_file, json_file = tmp_path / "c.yaml", tmp_path / "ds.json"
    yaml_file.write_bytes((bom + YAML_TEXT).encode(encoding))
    json_file.write_bytes((bom + JSON_TEXT).encode(encoding))
    with pytest.raises(NgptConfigError) as yaml_err:
        load_yaml(yaml_file)
    with pytest.raises(NgptConfigError) as json_err:
        load_ds_config(json_file)
    for err, what, path in ((yaml_err, "config", yaml_file), (json_err, "DeepSpeed config", json_file)):
        assert str(err.value) == (
            f"{what} {path} is {name} text (it starts with a {name} byte-order mark, as Windows PowerShell's `>` "
            f"writes), not UTF-8: save it as UTF-8 (e.g. `Out-File -Encoding utf8`, or iconv -f {name} -t UTF-8)"
        )


def test_latin1_byte_named_by_line_and_column(tmp_path):
    """Fault: an 'é' saved as Latin-1 (byte 0xe9) was 'UnicodeDecodeError: ... position 73', a byte offset."""
    yaml_file, json_file = tmp_path / "c.yaml", tmp_path / "ds.json"
    yaml_file.write_bytes(YAML_TEXT.encode("latin-1"))
    json_file.write_bytes(JSON_TEXT.encode("latin-1"))
    fix = (
        "(a character saved in another encoding, such as Latin-1 or Windows-1252?); save the file as UTF-8, or write "
        "that character in plain ASCII"
    )
    with pytest.raises(NgptConfigError) as yaml_err:
        load_yaml(yaml_file)
    assert str(yaml_err.value) == f"config {yaml_file} is not UTF-8 text: byte 0xe9 at line 3, column 6 {fix}"
    with pytest.raises(NgptConfigError) as json_err:
        load_ds_config(json_file)
    assert (
        str(json_err.value) == f"DeepSpeed config {json_file} is not UTF-8 text: byte 0xe9 at line 3, column 18 {fix}"
    )


def test_column_counts_characters_after_a_utf8_mark(tmp_path):
    """The column is an editor's: characters, not bytes, and not counting a UTF-8 byte-order mark."""
    path = tmp_path / "c.yaml"
    path.write_bytes("\ufeffmodel: {arch: ngpt}\n# ü €: ".encode() + b"\xe9\n")
    with pytest.raises(NgptConfigError, match=r"is not UTF-8 text: byte 0xe9 at line 2, column 8 \(a character"):
        load_yaml(path)


def test_utf8_with_and_without_mark_still_read(tmp_path):
    """The fix refuses nothing that was read: UTF-8, with or without its byte-order mark."""
    for bom in ("", "\ufeff"):
        (tmp_path / "c.yaml").write_bytes((bom + YAML_TEXT).encode("utf-8"))
        (tmp_path / "ds.json").write_bytes((bom + JSON_TEXT).encode("utf-8"))
        assert load_yaml(tmp_path / "c.yaml") == {"model": {"arch": "ngpt"}, "train": {"max_steps": 2}}
        assert load_ds_config(tmp_path / "ds.json") == {"train_micro_batch_size_per_gpu": 4, "comment": "café"}


def test_train_refuses_a_utf16_yaml_in_one_line(tmp_path, tiny_dataset):
    """launch/train.py with a UTF-16 YAML: exit status 2, one line naming the file and the fix, no traceback."""
    config = write_yaml(tmp_path / "c.yaml", tiny_ngpt(), tiny_train(2))
    config.write_bytes(config.read_text().encode("utf-16"))
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=4, accum=1)
    cmd = [sys.executable, REPO / "launch/train.py", "--config", config, "--deepspeed_config", ds]
    proc = run([*cmd, "--data", tiny_dataset, "--out", tmp_path / "out", "--no-progress"], check=False, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"error: config {config} is UTF-16 text (it starts with a UTF-16 byte-order mark" in proc.stderr
    assert not (tmp_path / "out").exists()
