"""collectives.all_answers on a real 2-rank gloo job (tests/workers/load38_all_answers.py), its answer raising on
rank 1 alone: every rank stops with one line, and rank 1's traceback is written once, on rank 1's stderr (its log),
so that a bug in ngpt_ds's code can be found from that rank's log."""

from __future__ import annotations

import pytest

from conftest import REPO, run_ranks

WORKER = REPO / "tests/workers/load38_all_answers.py"
INNERMOST = 'raise KeyError("a bug on rank 1")  # the innermost frame the test looks for'


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_an_unknown_error_on_one_rank_is_one_line_on_every_rank_and_its_traceback_once_on_that_rank():
    """The traceback of an error no check words (a bug: KeyError) is logged on the failing rank only, once, its
    innermost frame included; every rank prints the same one line naming rank 1, type and message. This held
    before session 38 too (all_answers logs it with _log.exception, errors pass the rank filter on every rank):
    a guard for it."""
    codes, outputs = run_ranks([WORKER, "key"], timeout=120)
    assert codes == [2, 2], outputs
    for output in outputs:
        assert _errors(output) == ["error: rank 1: KeyError: 'a bug on rank 1'"], output
    assert outputs[1].count(INNERMOST) == 1, outputs[1]
    assert outputs[1].count("Traceback (most recent call last)") == 1, outputs[1]
    assert "rank 1: answering the test failed" in outputs[1]
    assert "Traceback" not in outputs[0] and INNERMOST not in outputs[0], outputs[0]


@pytest.mark.parametrize(
    ("fault", "line"),
    [
        ("memory", "error: rank 1: MemoryError"),
        ("lines", "error: rank 1: RuntimeError: first line of rank 1's error second line third line"),
    ],
)
def test_the_line_of_an_unknown_error_is_one_line(fault, line):
    """Fault: all_answers wrote the error as f'{type}: {message}': a MemoryError (no message) read 'rank 1:
    MemoryError: ', and a message of several lines (as torch words many) printed several lines after 'error:', its
    later lines without the prefix that marks an error. Now the line is one line (the message's lines joined), the
    type alone where there is no message; the full text stays in rank 1's traceback."""
    codes, outputs = run_ranks([WORKER, fault], timeout=120)
    assert codes == [2, 2], outputs
    for output in outputs:
        assert _errors(output) == [line], output
    assert outputs[0].splitlines() == [line], outputs[0]  # nothing else: no later lines of the message
    assert outputs[1].count("Traceback (most recent call last)") == 1, outputs[1]
