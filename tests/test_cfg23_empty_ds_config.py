"""An empty DeepSpeed JSON file is called empty, not a syntax error at line 1."""

from __future__ import annotations

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.ds_config import load_ds_config


@pytest.mark.parametrize("text", ["", "\n", "  \n\t\n"])
def test_an_empty_deepspeed_config_is_called_empty(tmp_path, text):
    """Fault: `--deepspeed_config ds.json` on an empty file (a failed redirect, a save cut short) said "not valid
    JSON at line 1, column 1: Expecting value" (or line 2, line 3), as if a character there were wrong. Now: the
    file is named as empty, with what to give it."""
    path = tmp_path / "ds.json"
    path.write_text(text)
    with pytest.raises(NgptConfigError) as err:
        load_ds_config(str(path))
    assert str(err.value) == (
        f"DeepSpeed config {path} is empty: give it a JSON object of DeepSpeed settings, or pass a shipped one, "
        "e.g. --deepspeed_config ds_configs/zero2.json"
    )


def test_a_json_syntax_error_keeps_its_line_and_column(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{"train_micro_batch_size_per_gpu": 4,}\n')
    with pytest.raises(NgptConfigError) as err:
        load_ds_config(str(path))
    assert (
        str(err.value)
        == f"{path}: not valid JSON at line 1, column 38: Expecting property name enclosed in double quotes; JSON "
        "allows no comma after the last item: delete the comma before the }"
    )
