"""The one YAML reader of ngpt_ds: PyYAML's safe loader with merge keys kept bounded.

YAML's merge key copies the entries of the mappings it names (`<<: [*a, *b]`), and PyYAML keeps every
copy until the mapping is built, even where a later one replaces an earlier one. Mappings that merge
mappings that merge mappings grow by the number of names at each level: a file of under 600 bytes
(`a1: &a1 {<<: [*a0, *a0, ... nine times]}` nested nine deep) held 9^9 entries, and yaml.safe_load
took minutes and gigabytes before any message could name the file.

`Loader.flatten_mapping` keeps, after PyYAML's merge, one entry per key, as the mapping being built
would (dict semantics: the place and key of its first entry, the value of its last), so every
mapping holds at most as many entries as the file writes distinct keys, at each level. What a file
means is unchanged: the result equals yaml.safe_load's, order of keys included, for every file
that safe_load reads in reasonable time.
"""

from __future__ import annotations

from typing import Any

import yaml

YAMLError = yaml.YAMLError
"""yaml.YAMLError, so that a reader may import this module in the place of yaml."""


class _Unhashable:
    """Stands for a key that cannot be a dict key (PyYAML refuses it when it builds the mapping): one entry
    per node, which the merge shares rather than copies, so these stay bounded too."""

    def __init__(self, node: yaml.Node) -> None:
        self.node = node

    def __hash__(self) -> int:
        return id(self.node)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Unhashable) and other.node is self.node


class Loader(yaml.SafeLoader):
    """yaml.SafeLoader whose merged mappings hold one entry per key (see the module's header)."""

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        super().flatten_mapping(node)
        entries: dict[Any, list[yaml.Node]] = {}
        for key_node, value_node in node.value:
            key: Any = _Unhashable(key_node)
            if isinstance(key_node, yaml.ScalarNode):
                constructed = self.construct_object(key_node, deep=True)
                try:
                    hash(constructed)
                except TypeError:
                    pass
                else:
                    key = constructed
            if key in entries:
                entries[key][1] = value_node  # a later entry replaces the value, not the place
            else:
                entries[key] = [key_node, value_node]
        node.value = [(key_node, value_node) for key_node, value_node in entries.values()]


def safe_load(stream: str | bytes) -> Any:
    """yaml.safe_load with bounded merge keys (`Loader`)."""
    return yaml.load(stream, Loader=Loader)  # noqa: S506 - Loader is a yaml.SafeLoader
