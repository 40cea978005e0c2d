"""A metrics.checked.json whose "max_step" was lowered must not let a rollback keep the records after the resumed step.

The fault (red29, session 29): a resume trusted the checked prefix of metrics.jsonl whenever the mark's file
identity and the digest of its last 4 KiB matched and its "max_step" was not beyond the resumed step. The digest
does not cover "max_step": a mark edited to say -1 or 5 (by hand, or copied with the run and changed) made a resume
from step 10 of a file logged to step 20 keep steps 11..20, and the resumed run logged 11..20 again: each twice.
"""

import json

import pytest

from ngpt_ds.train.metrics_jsonl import CHECKED_FILE, truncate_jsonl


def _line(step: int) -> str:
    return json.dumps({"step": step, "train/loss": 3.0 + step / 100}) + "\n"


@pytest.mark.parametrize("lowered", [-1, 0, 5, 10])
def test_a_lowered_max_step_in_the_mark_still_moves_the_steps_after_a_rollback(tmp_path, lowered):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(_line(step) for step in range(1, 21)))
    assert truncate_jsonl(path, 20) == []  # the resume that leaves the file checked
    checked = path.with_name(CHECKED_FILE)
    mark = json.loads(checked.read_text())
    assert (mark["max_step"], mark["records"]) == (20, 20)
    checked.write_text(json.dumps({**mark, "max_step": lowered}))

    assert truncate_jsonl(path, 10) == list(range(11, 21))  # a resume from the checkpoint of step 10
    assert path.read_text() == "".join(_line(step) for step in range(1, 11))
    replaced = path.with_name("metrics.replaced.jsonl").read_text()
    assert replaced == "".join(_line(step) for step in range(11, 21))
    mark = json.loads(checked.read_text())
    assert (mark["bytes"], mark["max_step"], mark["records"]) == (path.stat().st_size, 10, 10)


def test_a_mark_whose_last_line_is_longer_than_the_bytes_read_is_not_trusted(tmp_path):
    """The prefix's last line is checked: one too long to be seen whole is read whole (at worst a full read)."""
    path = tmp_path / "metrics.jsonl"
    big = json.dumps({"step": 2, "pad": "x" * 40000}) + "\n"
    path.write_text(_line(1) + big)
    assert truncate_jsonl(path, 2) == []
    checked = path.with_name(CHECKED_FILE)
    mark = json.loads(checked.read_text())
    checked.write_text(json.dumps({**mark, "max_step": 1}))
    assert truncate_jsonl(path, 1) == [2]
    assert path.read_text() == _line(1)
