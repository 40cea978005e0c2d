"""Merge keys that copy distinct keys over and over are refused in every YAML reader (ngpt_ds.yaml_safe).

Fault: yaml_safe kept one entry per distinct key, which stopped the 9^9 merge bomb, but distinct keys still add up.
A chain of mappings each merging the one before (`m2: &m2 {<<: *m1, k2: 1}`) holds N^2 / 2 entries: a 70 kB
config.yaml of 2,000 links took 30 s and 427 MB in load_yaml before it said a word (a 1 MiB config: tens of
GB). One mapping of 3,000 keys merged 1,000 times (32 kB) copied 3 million entries: 4.4 s and 273 MB.
Before: both files were read (slowly) and trained on. Now: a mapping is flattened once however often it is
merged, and past MAX_MERGED_ENTRIES entries copied by the merges of one document the file is refused with a
ConstructorError naming the line (load_yaml: an NgptConfigError naming the file).
"""

from pathlib import Path

import pytest
import yaml

from ngpt_ds import yaml_safe
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.config import load_yaml

from conftest import fails_after

REFUSAL = (
    "its merge keys (<<) copy more than 100,000 entries in all (mappings merged over and over, or into each "
    "other in a chain): no config needs that many; write the settings out"
)


def chain(links: int) -> str:
    lines = ["m0: &m0 {k0: 1}"] + [f"m{i}: &m{i} {{<<: *m{i - 1}, k{i}: 1}}" for i in range(1, links)]
    return "\n".join(lines) + "\n"


def wide(keys: int, merges: int) -> str:
    mapping = ", ".join(f"k{i}: 1" for i in range(keys))
    return f"a: &a {{{mapping}}}\nb: {{<<: [{','.join(['*a'] * merges)}]}}\n"


def test_a_chain_of_merges_is_refused_at_the_link_past_the_cap():
    """Fault: a chain of 2,000 merged mappings (70 kB) held 2 million entries (30 s, 427 MB). Before: read.
    Now: refused at link 447, where the entries copied pass 100,000 (1 + 2 + ... + 447 = 100,128)."""
    with fails_after(20, "the merge chain"), pytest.raises(yaml.constructor.ConstructorError) as raised:
        yaml_safe.safe_load(chain(2000))
    assert raised.value.problem == REFUSAL
    assert raised.value.context_mark.line + 1 == 448  # `m447: &m447 {<<: *m446, k447: 1}`
    assert raised.value.problem_mark.line + 1 == 447  # the mapping merged there, m446


def test_one_mapping_merged_a_thousand_times_is_refused():
    """Fault: 3,000 keys merged 1,000 times copied 3 million entries (4.4 s, 273 MB). Before: read. Now: refused
    at line 2, where the merges are written."""
    with fails_after(20, "the wide merge"), pytest.raises(yaml.constructor.ConstructorError) as raised:
        yaml_safe.safe_load(wide(3000, 1000))
    assert raised.value.problem == REFUSAL
    assert raised.value.context_mark.line + 1 == 2


def test_the_config_reader_names_the_file(tmp_path: Path):
    """The trainer's --config reader turns the refusal into an NgptConfigError naming the file and the line."""
    path = tmp_path / "config.yaml"
    path.write_text(chain(2000))
    with fails_after(20, "load_yaml"), pytest.raises(NgptConfigError) as raised:
        load_yaml(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: not valid YAML: while constructing a mapping\n")
    assert "line 448, column 7:\n    m447: &m447 {<<: *m446, k447: 1}" in message
    assert REFUSAL in message


@pytest.mark.parametrize("text", [chain(447), wide(1000, 100), wide(100_000, 1)])
def test_merges_up_to_the_cap_read_as_yaml_safe_load_reads_them(text):
    """Up to MAX_MERGED_ENTRIES copied (99,681; 100,000; 100,000) the result is yaml.safe_load's, keys in order."""
    assert repr(yaml_safe.safe_load(text)) == repr(yaml.safe_load(text))


def test_a_mapping_merged_twice_is_flattened_once_and_counted_each_time():
    """A merged mapping that itself merges is flattened at its first merge only: its keys are the same after."""
    text = "a: &a {x: 1}\nb: &b {<<: *a, y: 2}\nc: {<<: [*b, *b], z: 3}\nd: {<<: *b}\n"
    assert yaml_safe.safe_load(text) == yaml.safe_load(text)
    loader = yaml_safe.Loader(text)
    try:
        loader.get_single_data()
        assert loader._merged == 1 + 2 + 2 + 2  # a into b, b twice into c, b into d
    finally:
        loader.dispose()
