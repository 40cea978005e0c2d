"""YAML merge keys stay bounded in every reader of a YAML file (ngpt_ds.yaml_safe).

Fault: mappings that merge mappings that merge mappings (`a1: &a1 {<<: [*a0, *a0, ...]}`, nine names nested
nine deep: under 600 bytes) made PyYAML hold 9^9 entries; yaml.safe_load took 334 s and 1.2 GB before the
trainer could name the file (--config, a checkpoint's or run folder's config.yaml).
"""

import time

import pytest
import yaml

from ngpt_ds import errors, yaml_safe
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.infer.run_checkpoint import read_run_config
from ngpt_ds.model.config import load_yaml
from ngpt_ds.train import out_folder, preflight, summary

from conftest import fails_after


def merge_bomb(depth: int = 9, fan: int = 9) -> str:
    lines = ["a0: &a0 {x: 1}"]
    for i in range(1, depth + 1):
        lines.append(f"a{i}: &a{i} {{<<: [{', '.join([f'*a{i - 1}'] * fan)}]}}")
    return "\n".join([*lines, "model:", f"  <<: *a{depth}", "  arch: ngpt", ""])


def at_most(seconds: int):
    """Stop the block with a test failure after `seconds` (the old readers ran for minutes)."""
    return fails_after(seconds, "reading")


@pytest.mark.parametrize(
    "reader",
    [
        pytest.param(lambda folder: load_yaml(folder / "config.yaml")["model"], id="load_yaml (--config)"),
        pytest.param(lambda folder: preflight.saved_run_config(folder)["model"], id="preflight.saved_run_config"),
        pytest.param(lambda folder: read_run_config(folder)["model"], id="run_checkpoint.read_run_config"),
        pytest.param(lambda folder: out_folder._config_sections(folder / "config.yaml"), id="out_folder (--out)"),
        pytest.param(lambda folder: summary._what_was_trained(folder), id="summary (end of a run)"),
        pytest.param(lambda folder: errors._unquoted_yaml_text(merge_bomb()), id="errors (a value's advice)"),
    ],
)
def test_a_merge_key_bomb_is_read_at_once_by_every_yaml_reader(tmp_path, reader):
    text = merge_bomb()
    assert len(text) < 600
    (tmp_path / "config.yaml").write_text(text)
    start = time.monotonic()
    with at_most(10):
        got = reader(tmp_path)
    assert time.monotonic() - start < 1.0
    expected = {
        set: {f"a{i}" for i in range(10)} | {"model"},
        str: "the model",  # the file names no config_source
        bool: False,  # a mapping, not text
    }.get(type(got), {"x": 1, "arch": "ngpt"})
    assert got == expected


MERGES = [
    "a: &a {x: 1, y: 2}\nb: {<<: [*a, {x: 3}], y: 4}\n",  # the first merged mapping wins, written keys over all
    "base: &b {lr: 1, n: 2, z: [1, 2]}\nm:\n  <<: *b\n  n: 5\n  q: 1\n",
    "a: &a {x: 1}\nb: &b {y: 2, x: 5}\nc: &c {<<: [*a, *b], k: 0}\nd: {<<: *c, y: 9}\n",
    "a: &a {1: x, 1.0: y, true: z}\nb: {<<: *a, 1: w}\n",  # keys equal as Python values: one entry, first place
    "a: {x: 1, x: 2, y: 3, x: 4}\n",  # duplicates written in one mapping: PyYAML keeps the place of the first
    "a: &a {x: {p: 1}}\nb: {<<: *a, x: {q: 2}}\nc: [*a, *a]\n",
    "a: &a {.nan: 1}\nb: {<<: [*a, *a]}\n",
    merge_bomb(depth=4, fan=3),
]


@pytest.mark.parametrize("text", MERGES)
def test_merge_keys_read_as_yaml_safe_load_reads_them(text):
    """The bounded merge changes no result: the same mapping as yaml.safe_load, keys in the same order."""
    assert repr(yaml_safe.safe_load(text)) == repr(yaml.safe_load(text))


def test_a_key_written_twice_in_a_mapping_merged_into_its_parent_is_still_named(tmp_path):
    """The config reader names a key written twice even where the mapping is merged (and so flattened) before
    it is built."""
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  base: &b {n_embd: 64, n_embd: 32}\n  <<: *b\n")
    with pytest.raises(NgptConfigError, match=r"key 'n_embd' appears twice \(line 2\); keep one"):
        load_yaml(path)
