"""Guard (held before red29's session 29 review): a crafted, stale or odd metrics.checked.json never costs a record
before the resumed step, never keeps one after it, never hangs or raises: at worst metrics.jsonl is read whole.

Each case resumes a file logged to step 20 from step 10 (a rollback to an older checkpoint) or from step 20, with
the mark replaced by something else, and checks the file's steps, the steps moved aside, and the mark left after.
"""

import json
import os

import pytest

from ngpt_ds.train.metrics_jsonl import CHECKED_FILE, REPLACED_JSONL, truncate_jsonl


def _line(step: int) -> str:
    return json.dumps({"step": step, "train/loss": 3.0 + step / 100}) + "\n"


def _steps(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


@pytest.fixture
def run(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(_line(step) for step in range(1, 21)))
    assert truncate_jsonl(path, 20) == []
    return path


def _good_mark(path):
    return json.loads(path.with_name(CHECKED_FILE).read_text())


CRAFTED = {
    "bytes beyond the file": lambda mark: {**mark, "bytes": mark["bytes"] + 10**6},
    "negative bytes": lambda mark: {**mark, "bytes": -5},
    "huge numbers": lambda mark: {**mark, "bytes": 10**300, "records": 10**300},
    "bytes as a string": lambda mark: {**mark, "bytes": str(mark["bytes"])},
    "bytes as a float": lambda mark: {**mark, "bytes": float(mark["bytes"])},
    "records true": lambda mark: {**mark, "records": True},
    "records beyond the bytes": lambda mark: {**mark, "records": mark["bytes"] + 1},
    "file as a string": lambda mark: {**mark, "file": "x"},
    "a list": lambda mark: [mark],
    "null": lambda mark: None,
}


@pytest.mark.parametrize("craft", CRAFTED.values(), ids=CRAFTED.keys())
@pytest.mark.parametrize("resumed", [10, 20])
def test_a_crafted_mark_at_worst_reads_the_whole_file(run, craft, resumed):
    run.with_name(CHECKED_FILE).write_text(json.dumps(craft(_good_mark(run))))
    assert truncate_jsonl(run, resumed) == list(range(resumed + 1, 21))
    assert _steps(run) == list(range(1, resumed + 1))
    mark = _good_mark(run)
    assert (mark["bytes"], mark["max_step"], mark["records"]) == (run.stat().st_size, resumed, resumed)


@pytest.mark.parametrize("odd", ["deep nesting", "2 GiB sparse", "named pipe", "link to /dev/zero", "folder"])
def test_an_odd_mark_file_is_replaced_by_a_regular_one_after_a_whole_read(run, odd):
    checked = run.with_name(CHECKED_FILE)
    checked.unlink()
    if odd == "deep nesting":
        checked.write_text("[" * 4000 + "]" * 4000)
    elif odd == "2 GiB sparse":
        with open(checked, "wb") as f:
            f.truncate(2 << 30)
    elif odd == "named pipe":
        os.mkfifo(checked)  # no writer: an open for reading would wait for good
    elif odd == "link to /dev/zero":
        checked.symlink_to("/dev/zero")
    else:
        checked.mkdir()
    if odd == "folder":
        assert truncate_jsonl(run, 10) == list(range(11, 21))  # the mark cannot be written there: none kept
        assert checked.is_dir()
    else:
        assert truncate_jsonl(run, 10) == list(range(11, 21))
        assert not checked.is_symlink() and _good_mark(run)["max_step"] == 10
    assert _steps(run) == list(range(1, 11))


def test_a_mark_linked_from_another_run_folder_is_not_this_files(run, tmp_path):
    """A run folder copied with `cp -a` (another inode, the same bytes) whose mark is a link to the original's."""
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "metrics.jsonl").write_bytes(run.read_bytes())
    (copy / CHECKED_FILE).symlink_to(run.with_name(CHECKED_FILE))
    with open(copy / "metrics.jsonl", "r+b") as f:  # a byte in the middle of the copy changed, its end kept
        f.seek(30)
        f.write(b"X")
    assert truncate_jsonl(copy / "metrics.jsonl", 20) == []
    assert _steps(copy / "metrics.jsonl") == [step for step in range(1, 21) if step != 1]  # the damaged line dropped
    assert not (copy / CHECKED_FILE).is_symlink()
    assert _good_mark(run)["file"][1] == run.stat().st_ino  # the original's mark left as it was


def test_a_kill_between_the_cut_and_the_new_mark_loses_nothing(run):
    """The rollback cut the file in place, then was killed before it wrote the new mark: the old mark (max_step 20,
    bytes beyond the cut file) stays. The next resume from step 10 reads whole and keeps steps 1..10 once."""
    stale = run.with_name(CHECKED_FILE).read_text()
    assert truncate_jsonl(run, 10) == list(range(11, 21))
    run.with_name(CHECKED_FILE).write_text(stale)  # as the kill left it
    with open(run, "a") as f:  # the resumed run logged again before it was killed
        f.write("".join(_line(step) for step in range(11, 15)))
    assert truncate_jsonl(run, 12) == [13, 14]
    assert _steps(run) == list(range(1, 13))
    replaced = [json.loads(line)["step"] for line in run.with_name(REPLACED_JSONL).read_text().splitlines()]
    assert replaced == [*range(11, 21), 13, 14]
