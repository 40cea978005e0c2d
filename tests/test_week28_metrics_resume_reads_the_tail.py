"""A resume reads metrics.jsonl from where the last resume left it checked, not from its start.

The fault (a week-long run's review, session 28): every resume read and parsed the whole metrics.jsonl on rank 0
(`truncate_jsonl`) while the other ranks waited. A 24-layer nGPT logs about 3.8 kB a record; at train.log_interval
10 a week of 10^6 steps is 10^5 records, 380 MB, measured at 6 s of CPU (9 s on a shared machine) per resume, and
each of the week's resumes read more of it. Bytes read are counted here (/proc/self/io's rchar), not seconds.
"""

import json
import os

import pytest
from bytes_read import bytes_read

from ngpt_ds.train.metrics import truncate_jsonl

WIDE = {f"ngpt/alpha_attn/layer_{i:02d}": 0.05 for i in range(60)}  # a wide record, as a deep model logs
RECORDS = 6000  # about 10 MB


def _line(step: int) -> str:
    return json.dumps({"step": step, "train/loss": 3.0 + step / 1e5, **WIDE}) + "\n"


@pytest.fixture
def long_run(tmp_path):
    """metrics.jsonl of a run logged to step RECORDS, resumed once there (the resume that leaves it checked)."""
    path = tmp_path / "metrics.jsonl"
    with open(path, "w") as f:
        for step in range(1, RECORDS + 1):
            f.write(_line(step))
    assert path.stat().st_size > 10 * 2**20
    assert truncate_jsonl(path, RECORDS) == []
    return path


def test_a_resume_after_a_stop_reads_only_what_the_last_session_appended(long_run):
    """Fault: the resume at the step the run stopped at read all 10 MB again."""
    path = long_run
    inode = path.stat().st_ino
    with open(path, "a") as f:  # the next session: 20 steps, then a stop at step RECORDS + 20
        f.write("".join(_line(step) for step in range(RECORDS + 1, RECORDS + 21)))
    size = path.stat().st_size
    read = bytes_read(lambda: truncate_jsonl(path, RECORDS + 20))
    assert read < 256 * 1024, read
    assert (path.stat().st_ino, path.stat().st_size) == (inode, size)


def test_a_resume_behind_the_last_records_cuts_the_end_in_place_reading_only_the_end(long_run):
    """Fault: a resume from the newest checkpoint, with records logged after it (a kill, a preemption's
    SIGKILL) and a line torn by the kill, read the whole file and copied all of it but the end to a new file."""
    path = long_run
    inode = path.stat().st_ino
    kept_size = path.stat().st_size + len("".join(_line(s) for s in range(RECORDS + 1, RECORDS + 11)))
    with open(path, "a") as f:
        f.write("".join(_line(step) for step in range(RECORDS + 1, RECORDS + 16)) + '{"step": 6016, "tr')
    moved = []
    read = bytes_read(lambda: moved.extend(truncate_jsonl(path, RECORDS + 10)))
    assert read < 256 * 1024, read
    assert moved == list(range(RECORDS + 11, RECORDS + 16))
    assert (path.stat().st_ino, path.stat().st_size) == (inode, kept_size)
    replaced = path.with_name("metrics.replaced.jsonl").read_text()
    assert replaced == "".join(_line(step) for step in range(RECORDS + 11, RECORDS + 16))
    end = _line(RECORDS + 9) + _line(RECORDS + 10)
    with open(path, "rb") as f:
        f.seek(-len(end) - 1, os.SEEK_END)
        assert f.read().decode() == "\n" + end
    # The next resume at that step reads only the end again.
    assert bytes_read(lambda: truncate_jsonl(path, RECORDS + 10)) < 64 * 1024


def test_a_rollback_before_the_checked_records_reads_the_whole_file_and_keeps_exactly_its_steps(long_run):
    """A resume before the largest checked step (--resume of an older checkpoint) cannot trust the check: the
    records after it may lie anywhere in the checked part. It reads the file whole, as every resume did."""
    path = long_run
    assert truncate_jsonl(path, 100) == list(range(101, RECORDS + 1))
    assert path.read_text() == "".join(_line(step) for step in range(1, 101))


def test_a_file_put_in_place_of_the_checked_one_is_read_whole(long_run):
    """The check names the file (device, inode) and the digest of its last checked bytes: another metrics.jsonl at
    the name (moved aside and replaced, edited by hand into a new file) is read whole, its damage dropped."""
    path = long_run
    other = path.with_name("other.jsonl")
    other.write_text(_line(1) + "garbage\n" + _line(2) + _line(3))
    os.replace(other, path)
    assert truncate_jsonl(path, 2) == [3]
    assert path.read_text() == _line(1) + _line(2)


def test_a_checked_file_changed_in_place_before_the_checked_length_is_read_whole(long_run):
    """Bytes changed within the last checked ones (a hand edit in place, a bad disk) fail the digest: read whole."""
    path = long_run
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size - len(_line(RECORDS)))
        f.write(b'{"step": "x"' + b" " * (len(_line(RECORDS)) - len('{"step": "x"') - 2) + b"}\n")
    read = bytes_read(lambda: truncate_jsonl(path, RECORDS))
    assert read > size, read
    assert path.read_text() == "".join(_line(step) for step in range(1, RECORDS))
