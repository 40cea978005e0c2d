"""YAML syntax errors told on one line, by line and column, not PyYAML's several lines about '<unicode string>'."""

from __future__ import annotations

import pytest

from ngpt_ds import yaml_safe
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.preflight import saved_run_config


@pytest.mark.parametrize(
    "text, said",
    [
        (
            "model: {n_layer: 2\ntrain: {max_steps: 2}\n",
            "line 2, column 6: expected ',' or '}', but got ':' (while parsing a flow mapping at line 1, column 8)",
        ),
        (
            "model:\n\tn_layer: 2\n",
            "line 2, column 1: found character '\\t' that cannot start any token; YAML indents with spaces, not tabs",
        ),
        ("a: b: c\n", "line 1, column 5: mapping values are not allowed here"),
        ("a: *nope\n", "line 1, column 4: found undefined alias 'nope'"),
    ],
)
def test_a_yaml_syntax_error_is_described_on_one_line(text, said):
    with pytest.raises(yaml_safe.YAMLError) as err:
        yaml_safe.safe_load(text)
    assert yaml_safe.describe(err.value) == said


def test_a_resume_from_a_checkpoint_whose_config_yaml_is_not_yaml_says_where_on_one_line(tmp_path):
    """Fault: a checkpoint's damaged config.yaml stopped the resume with PyYAML's message spliced in: five lines,
    two of them 'in "<unicode string>", line 1, column 8:' and the text around the mark, inside the one error
    line every command prints. Now: one line, with the line and column in the file."""
    checkpoint = tmp_path / "step_00000002"
    checkpoint.mkdir()
    (checkpoint / "config.yaml").write_text("model: {n_layer: 2\ntrain: {}\n")
    with pytest.raises(NgptConfigError) as err:
        saved_run_config(checkpoint)
    assert str(err.value) == (
        f"--resume {checkpoint}: its config.yaml cannot be read (line 2, column 6: expected ',' or '}}', but got ':' "
        "(while parsing a flow mapping at line 1, column 8)); the checkpoint was not written by the ngpt_ds trainer "
        "or is damaged"
    )
