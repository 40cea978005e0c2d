"""YAML 1.1's base-60 ints (`1:30` is 90) are read in time near linear in their length."""

import pytest
import yaml

from ngpt_ds import yaml_safe
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.config import load_yaml

from conftest import fails_after

PARTS = 300_000  # `1:59:59:...`: 900 kB, under the config readers' 1 MiB
LONG = 1_000_000  # 3 MB, for yaml_safe.safe_load itself (no size cap)


def test_a_long_base60_int_in_a_config_is_read_without_quadratic_work(tmp_path):
    """Fault: PyYAML reads `1:59:59:...` by adding each part times a growing power of 60, quadratic in the
    parts, and the config reader reads each number twice (its YAML 1.1 check, then the value). Before: 480 kB of
    such a value took 10 s in yaml_safe.safe_load, a 900 kB config 25 s in load_yaml before the value was
    refused, and 3 MB some minutes. Now: the parts are joined in halves (0.6 s for 480 kB, mostly parsing); the
    value is the same int, 1 then N parts of 59 in base 60 = 2 * 60^N - 1."""
    path = tmp_path / "run.yaml"
    text = "a: 1:" + ":".join(["59"] * PARTS) + "\n"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(NgptConfigError) as err:
        load_yaml(path)
    assert str(err.value) == (
        f"{path}: cannot be read as YAML: it holds a number of more than the 4300 digits that Python reads (no "
        "setting needs such a number): correct the number, or give the config file"
    )
    with fails_after(60, "reading a base-60 int of 3 MB"):  # the old reader: minutes
        value = yaml_safe.safe_load("a: 1:" + ":".join(["59"] * LONG) + "\n")["a"]
    assert value == 2 * 60**LONG - 1


@pytest.mark.parametrize(
    "text",
    ["1:30", "-1:30", "+1:2:3", "1_0:3_0", "190:20:30", "0:30", "0x1F", "010", "0b101", "-0", "12", "1:30.5"]
    + ["1:" + ":".join(["59"] * 500), "-1_2:" + ":".join(["7"] * 77)],
)
def test_ints_read_as_yaml_safe_load_reads_them(text):
    """Every int (and what is not one) reads as yaml.safe_load reads it."""
    ours, theirs = yaml_safe.safe_load(f"a: {text}")["a"], yaml.safe_load(f"a: {text}")["a"]
    assert (type(ours), ours) == (type(theirs), theirs)
