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

Distinct keys still add up: a mapping of K keys merged M times (`b: {<<: [*a, *a, ...]}`) copies K * M
entries before any are dropped (30 kB: 9 s and 691 MB), and a chain of N mappings each merging the one
before (`m2: &m2 {<<: *m1, k2: 1}`) holds N^2 / 2 (143 kB: 20 s and 817 MB; a 1 MiB config, tens of GB).
So a mapping is flattened once, however often it is merged, and the entries that merges copy in one
document are counted: past MAX_MERGED_ENTRIES the file is refused (a ConstructorError naming the line)
before they are copied.

YAML 1.1 reads `1:30` as the base-60 int 90, however many `:59` parts follow. PyYAML adds each part times a
growing power of 60, quadratic in the parts: a 480 kB value took 10 s (a 1 MiB config about a minute, twice in
the config reader). `Loader.construct_yaml_int` gives the same int, splitting the parts in halves.
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


MAX_MERGED_ENTRIES = 100_000
"""The most entries the merge keys of one document may copy in all. A config's merges copy tens (a block
of defaults merged into a few sections); the merge bombs above copy millions."""

_MERGE_TAG = "tag:yaml.org,2002:merge"
_VALUE_TAG = "tag:yaml.org,2002:value"


class Loader(yaml.SafeLoader):
    """yaml.SafeLoader whose merged mappings hold one entry per key, each flattened once, and whose merges copy
    at most MAX_MERGED_ENTRIES entries (see the module's header)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._flattened: set[int] = set()  # ids of the mapping nodes flattened (the nodes live for the load)
        self._merged = 0

    def _merge_source(self, node: yaml.MappingNode, source: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
        """The entries of `source`, a mapping merged into `node`, flattened (once) and counted."""
        if id(source) not in self._flattened:
            self.flatten_mapping(source)
        self._merged += len(source.value)
        if self._merged > MAX_MERGED_ENTRIES:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"its merge keys (<<) copy more than {MAX_MERGED_ENTRIES:,} entries in all (mappings merged over "
                "and over, or into each other in a chain): no config needs that many; write the settings out",
                source.start_mark,
            )
        return source.value

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # PyYAML's SafeConstructor.flatten_mapping (6.0), with each merged mapping taken by _merge_source.
        merge: list[tuple[yaml.Node, yaml.Node]] = []
        index = 0
        while index < len(node.value):
            key_node, value_node = node.value[index]
            if key_node.tag == _MERGE_TAG:
                del node.value[index]
                if isinstance(value_node, yaml.MappingNode):
                    merge.extend(self._merge_source(node, value_node))
                elif isinstance(value_node, yaml.SequenceNode):
                    submerge = []
                    for subnode in value_node.value:
                        if not isinstance(subnode, yaml.MappingNode):
                            raise yaml.constructor.ConstructorError(
                                "while constructing a mapping",
                                node.start_mark,
                                f"expected a mapping for merging, but found {subnode.id}",
                                subnode.start_mark,
                            )
                        submerge.append(self._merge_source(node, subnode))
                    for value in reversed(submerge):
                        merge.extend(value)
                else:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"expected a mapping or list of mappings for merging, but found {value_node.id}",
                        value_node.start_mark,
                    )
            elif key_node.tag == _VALUE_TAG:
                key_node.tag = "tag:yaml.org,2002:str"
                index += 1
            else:
                index += 1
        if merge:
            node.value = merge + node.value
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
        self._flattened.add(id(node))


def _base60(digits: list[int]) -> int:
    """The int written in base 60 by `digits`, most significant first: halves joined by one multiplication
    each, so a long value costs a few big multiplications, not one per digit over an ever longer int."""
    if len(digits) <= 32:
        value = 0
        for digit in digits:
            value = value * 60 + digit
        return value
    half = len(digits) // 2
    return _base60(digits[:half]) * 60 ** (len(digits) - half) + _base60(digits[half:])


def _construct_yaml_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """yaml.SafeLoader's int constructor, with base-60 ints (`1:30`) by `_base60` (see the module's header)."""
    text = str(loader.construct_scalar(node)).replace("_", "")
    body = text[1:] if text[:1] in "+-" else text
    if ":" in body and not body.startswith("0"):  # where PyYAML reads base 60 (0b, 0x and octal come first)
        return (-1 if text[0] == "-" else 1) * _base60([int(part) for part in body.split(":")])
    return yaml.SafeLoader.construct_yaml_int(loader, node)


Loader.add_constructor("tag:yaml.org,2002:int", _construct_yaml_int)
Loader.construct_yaml_int = _construct_yaml_int  # type: ignore[assignment,method-assign]  # what readers call by name


def safe_load(stream: str | bytes) -> Any:
    """yaml.safe_load with bounded merge keys (`Loader`)."""
    return yaml.load(stream, Loader=Loader)  # noqa: S506 - Loader is a yaml.SafeLoader


def describe(err: yaml.YAMLError, text: str | None = None) -> str:
    """A YAML error on one line, by line and column: PyYAML's text spans several lines and names the source as
    '<unicode string>' (every reader here parses text already read), which says nothing about the file. `text`,
    the text parsed, places a character YAML refuses by line and column (PyYAML gives its offset alone)."""
    if isinstance(err, yaml.reader.ReaderError) and isinstance(err.character, int):
        # "unacceptable character #x0000: special characters are not allowed in "<unicode string>", position 30":
        # a NUL byte (a file cut short, or saved as binary) or a control character pasted from a terminal.
        where = f"character {err.position + 1}"
        if text is not None and 0 <= err.position <= len(text):
            before = text[: err.position]
            where = f"line {before.count(chr(10)) + 1}, column {err.position - before.rfind(chr(10))}"
        return (
            f"{where}: character #x{err.character:04x} is not printable text, which YAML requires: delete it (NUL "
            "bytes mean a file cut short, or not a config file)"
        )
    if not isinstance(err, yaml.MarkedYAMLError):
        return " ".join(str(err).split())
    problem = err.problem or err.context or "not valid YAML"
    where = f"line {err.problem_mark.line + 1}, column {err.problem_mark.column + 1}: " if err.problem_mark else ""
    context = ""
    if err.context and err.problem and err.context_mark is not None:
        context = f" ({err.context} at line {err.context_mark.line + 1}, column {err.context_mark.column + 1})"
    tabs = "; YAML indents with spaces, not tabs" if "'\\t'" in problem else ""
    return where + problem + context + tabs
