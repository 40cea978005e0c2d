"""A DeepSpeed JSON with a comma after its last item (input30): JSONC/JSON5 examples and hand edits leave one, and
Python 3.11's parser says only "Expecting property name enclosed in double quotes" (or "Expecting value") at the
closing brace, which names neither the comma nor the fix. Now the message says to delete the comma."""

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.ds_config import load_ds_config


@pytest.mark.parametrize(
    ("text", "where", "closing"),
    [
        ('{"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 0},}', "line 1, column 73", "}"),
        (
            '{\n  "train_micro_batch_size_per_gpu": 4,\n  "zero_optimization": {"stage": 2,\n  }\n}',
            "line 4, column 3",
            "}",
        ),
        ('{"train_micro_batch_size_per_gpu": 4, "betas": [0.9, 0.95, ]}', "line 1, column 60", "]"),
    ],
)
def test_trailing_comma_named_with_the_fix(tmp_path, text, where, closing):
    """Fault: a trailing comma was 'not valid JSON at line 1, column 73: Expecting property name enclosed in double
    quotes', no fix."""
    path = tmp_path / "ds.json"
    path.write_text(text)
    with pytest.raises(NgptConfigError) as err:
        load_ds_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not valid JSON at {where}: Expecting ")
    assert message.endswith(f"; JSON allows no comma after the last item: delete the comma before the {closing}")


@pytest.mark.parametrize("text", ['{"a": 1 "b": 2}', '{"a": [1, , 2]}', "{,}", '{"a": 1}}'])
def test_other_syntax_errors_get_no_comma_advice(tmp_path, text):
    """A missing comma, an empty item or a stray brace is not a trailing comma: no advice to delete one."""
    path = tmp_path / "ds.json"
    path.write_text(text)
    with pytest.raises(NgptConfigError) as err:
        load_ds_config(path)
    assert "not valid JSON at line 1" in str(err.value)
    assert "comma after the last item" not in str(err.value)
