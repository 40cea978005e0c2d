"""One error type for bad user input, and a collector that reports every problem at once."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable


class NgptConfigError(ValueError):
    """Bad user input (a config field, a file, a data set). The message names it and the fix.

    Raised before any compute starts; entry scripts print the message without a traceback.
    """


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
        self.items.append(f"{field} = {value!r}: {fix}")

    def check(self, ok: bool, field: str, value: object, fix: str) -> None:
        if not ok:
            self.add(field, value, fix)

    def unknown_fields(self, section: str, values: dict, known: Iterable[str],
                       extra_hint: Callable[[str], str] = lambda key: "") -> None:
        """Report every key of a config section that is not a field, with the closest field name."""
        known = sorted(known)
        for key in sorted(set(values) - set(known)):
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            self.add(f"{section}.{key}", values[key], f"unknown field{hint}{extra_hint(key)}")

    def raise_if_any(self) -> None:
        if self.items:
            lines = "\n".join(f"  - {item}" for item in self.items)
            n = len(self.items)
            raise NgptConfigError(f"{self.subject}: {n} problem{'s' if n > 1 else ''}\n{lines}")
