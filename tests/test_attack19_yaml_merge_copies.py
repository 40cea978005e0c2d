"""Merge keys that copy many distinct entries are refused by every YAML reader before they are copied."""

import pytest
import yaml

from ngpt_ds import yaml_safe
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.config import load_yaml

from conftest import fails_after

PROBLEM = (
    "its merge keys (<<) copy more than 100,000 entries in all (mappings merged over and over, or into each other "
    "in a chain): no config needs that many; write the settings out"
)


def wide(keys: int, times: int) -> str:
    """A mapping of `keys` keys merged `times` times into one mapping."""
    return "a: &a {" + ", ".join(f"k{i}: 1" for i in range(keys)) + "}\nb: {<<: [" + ",".join(["*a"] * times) + "]}\n"


def chain(length: int) -> str:
    """`length` mappings, each merging the one before and adding a key: the last holds `length` keys."""
    lines = ["m0: &m0 {k0: 1}"] + [f"m{i}: &m{i} {{<<: *m{i - 1}, k{i}: 1}}" for i in range(1, length)]
    return "\n".join(lines) + "\n"


def test_a_mapping_merged_thousands_of_times_is_refused_before_its_entries_are_copied():
    """Fault: yaml_safe dropped repeated merged keys only after PyYAML's merge had copied every entry of every
    merged mapping (and flattened it again each time it was named), so distinct keys multiplied. Before: a
    mapping of 2000 keys merged 4000 times (31 kB) took 9 s and 691 MB, then loaded; at 1 MiB it is 10^10
    entries. Now: a mapping is flattened once, and past MAX_MERGED_ENTRIES copied entries the file is refused
    with a ConstructorError at the merging mapping."""
    with fails_after(60, "reading the merges"), pytest.raises(yaml.constructor.ConstructorError) as err:
        yaml_safe.safe_load(wide(2000, 4000))
    assert err.value.problem == PROBLEM
    assert (err.value.context_mark.line, err.value.context_mark.column) == (1, 3)  # line 2: `b: {<<: [...]}`
    assert yaml_safe.MAX_MERGED_ENTRIES == 100_000


def test_a_chain_of_merges_in_a_config_is_named_by_the_config_reader(tmp_path):
    """Fault: a chain of mappings each merging the one before (`m2: &m2 {<<: *m1, k2: 1}`) holds N^2 / 2
    entries for N lines, all distinct. Before: --config with 2000 such lines (70 kB) took 4 s and 217 MB (4000
    lines: 20 s and 817 MB; 1 MiB: tens of GB) before the unknown sections were named. Now: refused at the
    mapping whose merge passes MAX_MERGED_ENTRIES, as invalid YAML, naming the file and the line."""
    path = tmp_path / "run.yaml"
    path.write_text(chain(2000), encoding="utf-8")
    with fails_after(60, "reading the config"), pytest.raises(NgptConfigError) as err:
        load_yaml(path)
    message = str(err.value)
    assert message == (
        f"{path}: not valid YAML: line 447, column 7: {PROBLEM} (while constructing a mapping at line 448, column 7)"
    )


@pytest.mark.parametrize("text", [wide(50, 40), chain(100), wide(3, 2) + "c: {<<: [*a, {k1: 9}], k2: 0}\n"])
def test_merges_under_the_bound_read_as_yaml_safe_load_reads_them(text):
    """Flattening each mapping once changes no result: the same mappings as yaml.safe_load, keys in order."""
    assert repr(yaml_safe.safe_load(text)) == repr(yaml.safe_load(text))
