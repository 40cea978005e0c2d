"""Config files that stop the parser in a ValueError or RecursionError (input30): a number of 5000 digits was
"cannot be read as JSON (ValueError: Exceeds the limit (4300 digits) for integer string conversion: value has 5000
digits; use sys.set_int_max_str_digits() to increase the limit)", advice for a programmer, and lists nested 100,000
deep "(RecursionError: maximum recursion depth exceeded while calling a Python object)", no fix. Now each says what
the file holds and what to do."""

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.config import load_yaml
from ngpt_ds.train.ds_config import load_ds_config

DEEP = (
    "its lists or mappings nest thousands deep, beyond what the parser follows (maximum recursion depth); a config "
    "nests a few levels: the file is damaged or not a config file, give the config file"
)
DIGITS = (
    "it holds a number of 5000 digits, more than the 4300 that Python reads (no setting needs such a number): "
    "correct the number, or give the config file"
)


@pytest.mark.parametrize(
    ("name", "text", "why"),
    [
        ("c.yaml", "model: " + "[" * 100_000 + "]" * 100_000 + "\n", DEEP),
        ("c.yaml", "model: {n_layer: " + "9" * 5000 + "}\n", DIGITS),
        ("ds.json", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", DEEP),
        ("ds.json", '{"train_micro_batch_size_per_gpu": ' + "9" * 5000 + "}", DIGITS),
    ],
)
def test_unparsable_configs_named_with_the_fix(tmp_path, name, text, why):
    """Fault: Python's texts ('use sys.set_int_max_str_digits()', 'maximum recursion depth exceeded while ...')."""
    path = tmp_path / name
    path.write_text(text)
    kind = "YAML" if name.endswith(".yaml") else "JSON"
    with pytest.raises(NgptConfigError) as err:
        load_yaml(path) if kind == "YAML" else load_ds_config(path)
    assert str(err.value) == f"{path}: cannot be read as {kind}: {why}"
