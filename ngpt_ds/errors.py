"""One error type for bad user input, and a collector that reports every problem at once."""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import types
import typing
from collections.abc import Callable, Iterable

if typing.TYPE_CHECKING:
    from _typeshed import DataclassInstance


#: Beyond their own errors, json.loads and yaml.safe_load raise these on a damaged or crafted file:
#: ValueError for a number of more than 4300 digits (Python's int conversion limit; JSONDecodeError
#: and UnicodeDecodeError are ValueErrors too) and RecursionError for nesting thousands deep. Every
#: reader of a file a user may have been given (checkpoint config.yaml, dataset meta.json, export
#: config.json, part.json) catches them and names the file.
UNPARSABLE = (ValueError, RecursionError)

_ABRIDGED = reprlib.Repr()
_ABRIDGED.maxstring = _ABRIDGED.maxother = 300
_ABRIDGED.maxlevel = 2
_ABRIDGED.maxlist = _ABRIDGED.maxtuple = _ABRIDGED.maxdict = _ABRIDGED.maxset = 8


def abridged(value: object) -> str:
    """repr(value) for a message, bounded: a list nested by YAML aliases (9^9 items in 10 lines) is shown by its
    first levels and items instead of being expanded whole (minutes and gigabytes); paths and numbers as repr."""
    return _ABRIDGED.repr(value)


class NgptConfigError(ValueError):
    """Bad user input (a config field, a file, a data set). The message names it and the fix.

    Raised before any compute starts; entry scripts print the message without a traceback.
    """


MAX_LISTED = 50
"""Problems listed in one error; the rest are counted."""


class Problems:
    """Collects problems found while validating one object, then raises them together.

    >>> p = Problems("model config (presets/tiny.yaml)")
    >>> p.check(n_head > 0, "n_head", n_head, "must be a positive integer")
    >>> p.raise_if_any()
    """

    def __init__(self, subject: str):
        self.subject = subject
        self.items: list[str] = []

    def add(self, field: str, value: object, fix: str) -> None:
        self.items.append(f"{field} = {abridged(value)}: {fix}")

    def check(self, ok: bool, field: str, value: object, fix: str) -> None:
        if not ok:
            self.add(field, value, fix)

    def unknown_fields(
        self, section: str, values: dict, known: Iterable[str], extra_hint: Callable[[str], str] = lambda key: ""
    ) -> None:
        """Report every key of a config section that is not a field, with the closest field name."""
        known = sorted(known)
        for key in sorted(set(values) - set(known), key=str):
            name = str(key)
            if name.strip() in known:
                # `'seed ': 5` (a space typed before the colon, quoted, or pasted) was "train.seed  = 5: unknown
                # field; did you mean 'seed'?", the space invisible in the name shown.
                self.add(
                    f"{section}.{name!r}",
                    values[key],
                    f"unknown field: the name has a space or tab at its start or end; write {name.strip()!r} without it",
                )
                continue
            synonym = SYNONYMS.get(name.lower())
            close = [synonym] if synonym in known else difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            self.add(f"{section}.{name}", values[key], f"unknown field{hint}{extra_hint(name)}")

    def wrong_types(self, section: str, obj: DataclassInstance) -> None:
        """Report every dataclass field of `obj` whose value is not of its annotated type (YAML `lr: fast`,
        `betas: 0.9`), so that range checks afterwards compare numbers with numbers."""
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            expected = hints.get(f.name)
            if expected is not None and not _has_type(value, expected):
                hint = ""
                if isinstance(value, str) and _has_type(1.0, expected) and _is_number(value):
                    hint = (
                        f" (YAML reads {value} as text; write it with a dot, e.g. {_yaml_float(value)})"
                        if _unquoted_yaml_text(value)
                        else " (a quoted number is text in YAML: remove the quotes)"
                    )
                elif isinstance(value, str) and _has_type(1, expected) and _is_whole_number(value):
                    hint = " (a quoted number is text in YAML: remove the quotes)"
                elif ".json" not in self.subject and any(_has_type(v, expected) for v in (1, 1.0, "")):
                    hint = _yaml11_hint(value, expected)  # a JSON file's null or "0o17" is no YAML reading
                self.add(f"{section}.{f.name}", value, f"must be {_describe(expected)}{hint}")
            elif isinstance(value, float) and not math.isfinite(value):
                # YAML's .inf, .nan and 1.0e+999 are floats, and `> 0` passes inf: rope_base: .inf rotated one
                # pair of each head and left the others unrotated, training without complaint.
                self.add(f"{section}.{f.name}", value, "must be a finite number")

    def raise_if_any(self) -> None:
        """One error listing the problems: the first MAX_LISTED, then how many more. A JSON object of 90,000
        unknown keys had made a 7.6 MB message, printed by every rank."""
        if self.items:
            lines = "\n".join(f"  - {item}" for item in self.items[:MAX_LISTED])
            n = len(self.items)
            more = f"\n  ... and {n - MAX_LISTED} more" if n > MAX_LISTED else ""
            raise NgptConfigError(f"{self.subject}: {n} problem{'s' if n > 1 else ''}\n{lines}{more}")


def _has_type(value: object, expected: typing.Any) -> bool:
    """isinstance for the annotations config dataclasses use: int, float, str, bool, X | None, tuple[X, ...]."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arg) for arg in args)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:  # an int is a fine float
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(args)
            and all(_has_type(v, a) for v, a in zip(value, args))
        )
    return isinstance(value, expected) if isinstance(expected, type) else True


SYNONYMS = {
    "learning_rate": "lr",
    "learning-rate": "lr",
    "min_learning_rate": "min_lr",
    "steps": "max_steps",
    "num_steps": "max_steps",
    "train_steps": "max_steps",
    "total_steps": "max_steps",
    "max_iters": "max_steps",
    "warmup": "warmup_steps",
    "warmup_iters": "warmup_steps",
    "wd": "weight_decay",
    "adam_eps": "eps",
    "epsilon": "eps",
    "adam_betas": "betas",
    "num_layers": "n_layer",
    "n_layers": "n_layer",
    "num_hidden_layers": "n_layer",
    "d_model": "n_embd",
    "hidden_size": "n_embd",
    "num_heads": "n_head",
    "n_heads": "n_head",
    "num_attention_heads": "n_head",
    "block_size": "seq_len",
    "context_length": "seq_len",
    "max_seq_len": "seq_len",
    "max_position_embeddings": "seq_len",
}
"""Names other trainers give a field (lower case) -> ngpt_ds's name: `learning_rate: 0.1` was "unknown field" with no
name offered (difflib finds nothing close to 'lr'), while a near spelling (warmup_step) had one."""


def _yaml11_hint(value: object, expected: typing.Any) -> str:
    """The end of "must be ..." for a value YAML 1.1 (PyYAML) read as something other than what was written for a
    number or name field: `~`, `null` or nothing after the colon (None), yes/no/on/off (a bool), `0o17` and `10e3`
    (text: YAML 1.2's octal and an exponent without a dot), `1.0e4` for an integer (a float). The bare "must be an
    integer" named neither the reading nor the fix."""
    if value is None:
        return " (YAML reads ~, null and an empty value as no value: write one, or delete the line for the default)"
    if isinstance(value, bool):
        word = "true" if value else "false"
        return (
            f" (YAML reads yes/no, on/off and true/false unquoted as {word}: write the value meant, quoted if a word)"
        )
    if isinstance(value, str) and _has_type(1, expected) and not _has_type("", expected):
        text = value.strip().replace("_", "")
        sign, body = ("-" if text.startswith("-") else ""), text.lstrip("+-")
        if body[:2] in ("0o", "0O") and body[2:].isdigit() and set(body[2:]) <= set("01234567"):
            number = int(sign + body[2:], 8)
            return f" (YAML 1.1 reads 0o{body[2:]} as text, 0o being YAML 1.2's octal: write {number})"
        if _is_number(text) and float(text).is_integer() and "e" in text.lower():
            return f" (YAML reads {value} as text; write the whole number {int(float(text))})"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and not _has_type(1.0, expected):
        return f" (a number with a dot or an exponent is a float in YAML: write {int(value)})"
    return ""


def _unquoted_yaml_text(text: str) -> bool:
    """Whether YAML reads `text`, written without quotes, as text (1e-3: YAML 1.1's floats need a dot); if
    not, the value was quoted ('0.01'), and the advice to add a dot would be wrong."""
    from ngpt_ds import yaml_safe

    try:
        return isinstance(yaml_safe.safe_load(text), str)
    except yaml_safe.YAMLError:
        return True


def _yaml_float(text: str) -> str:
    """`text` (a number YAML 1.1 reads as text) as a float YAML reads as one: its mantissa needs a dot, its
    exponent a sign ('1e-05' -> '1.0e-05'; repr's '1e-05' is the text the user wrote)."""
    written = repr(float(text))
    mantissa, e, exponent = written.partition("e")
    if e and "." not in mantissa:
        mantissa += ".0"
    return mantissa + e + exponent


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_whole_number(text: str) -> bool:
    """`text` as YAML would read an integer unquoted: `'512'`, `' -3 '` (not `'5.0'`, which an int field refuses)."""
    try:
        int(text)
    except ValueError:
        return False
    return True


def _describe(expected: typing.Any) -> str:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is tuple:
        return (
            f"a list of {len(args)} {_describe(args[0]).removeprefix('a ')}s, e.g. [0.9, 0.95]"
            if len(set(args)) == 1
            else f"a list of {len(args)} values"
        )
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(expected, getattr(expected, "__name__", str(expected)))


def require_extra(module: str, extra: str, purpose: str) -> None:
    """Raise NgptConfigError naming the pip extra to install when `module` is not importable: without it a
    command that needs an optional dependency ended in a ModuleNotFoundError traceback (exit 1)."""
    import importlib.util

    try:
        missing = importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a broken install, or an import hook that refuses it
        missing = True
    if missing:
        raise NgptConfigError(
            f"{purpose} needs {module}, which is not installed: pip install 'ngpt_ds[{extra}]' "
            f"(from a checkout: pip install -e '.[{extra}]')"
        )
