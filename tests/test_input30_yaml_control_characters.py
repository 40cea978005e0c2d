"""A YAML config holding a NUL byte or another character YAML refuses (input30): a file cut short by a crash (its
end zero-filled), or a control character pasted from a terminal. Every rank said 'not valid YAML: unacceptable
character #x0000: special characters are not allowed in "<unicode string>", position 30': PyYAML's text, naming a
'<unicode string>' and an offset, no line and no fix. Now the line and column, and what to do."""

import pytest
import yaml

from ngpt_ds import yaml_safe
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.config import load_yaml

FIX = "is not printable text, which YAML requires: delete it (NUL bytes mean a file cut short, or not a config file)"


@pytest.mark.parametrize(
    ("text", "where", "code"),
    [
        ("model:\n  arch: ngpt\n  n_layer: 2\x00\x00\x00\n", "line 3, column 13", "0000"),
        ("model: {arch: ngpt}\ntrain: {lr: 0.01\x07}\n", "line 2, column 17", "0007"),
        ("model: {arch: ngpt, n_head: 2}  # \x1b[0m\n", "line 1, column 35", "001b"),
    ],
)
def test_control_characters_named_by_line_and_column(tmp_path, text, where, code):
    """Fault: 'unacceptable character #x0000: special characters are not allowed in "<unicode string>", position 32'."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(NgptConfigError) as err:
        load_yaml(path)
    assert str(err.value) == f"{path}: not valid YAML: {where}: character #x{code} {FIX}"


def test_without_the_text_the_offset_is_counted_from_one():
    """Readers that pass no text (a checkpoint's saved config) get the character's place in the file, 1-based."""
    with pytest.raises(yaml.YAMLError) as err:
        yaml_safe.safe_load("a: 1\x00")
    assert yaml_safe.describe(err.value) == f"character 5: character #x0000 {FIX}"


def test_other_yaml_errors_unchanged():
    """A syntax error keeps PyYAML's problem with its line and column."""
    with pytest.raises(yaml.YAMLError) as err:
        yaml_safe.safe_load("a: [1, 2\n")
    assert yaml_safe.describe(err.value).startswith("line 2, column 1: expected ',' or ']'")
