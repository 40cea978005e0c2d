"""metrics.jsonl on resume: the records after the resumed step go, and whatever a crash or a bad disk
left in the file is dropped instead of stopping the resume."""

import json
import os
import stat

from ngpt_ds.train.metrics import truncate_jsonl

from conftest import peak_python_bytes


def test_resume_drops_damaged_lines_of_metrics_jsonl_instead_of_stopping(tmp_path):
    """Fault: truncate_jsonl read the file as UTF-8 text and compared each record's step unchecked. Bytes
    that are not UTF-8 (a bad disk, garbage after a crash) stopped the resume with UnicodeDecodeError, a
    line with "step": "3" with TypeError, and a deeply nested line with RecursionError."""
    path = tmp_path / "metrics.jsonl"
    good = [json.dumps({"step": step, "train/loss": 5.0 - step}) + "\n" for step in range(1, 6)]
    damaged = [
        b"\xff\xfe\x00garbage\n",
        b"\x00" * 64 + b"\n",
        json.dumps({"step": "3"}).encode() + b"\n",
        json.dumps({"step": True}).encode() + b"\n",
        b"[" * 100_000 + b"\n",
        b"[1, 2]\n",
        b'{"train/loss": 1.0}\n',
    ]
    path.write_bytes(b"".join([good[0].encode(), *damaged, *(line.encode() for line in good[1:]), b'{"step": 6, "tr']))
    truncate_jsonl(path, 3)
    assert path.read_text(encoding="utf-8") == "".join(good[:3])
    assert not (path.parent / "metrics.jsonl.tmp").exists()


def test_resume_keeps_the_records_it_drops_beside_metrics_jsonl(tmp_path, capsys):
    """Fault: the records after the resumed step (what a run killed, stopped without a checkpoint or
    diverged after its newest checkpoint had logged) were deleted from metrics.jsonl without a copy or a
    word, unless a newer checkpoint folder was moved aside with them: a run SIGKILLed at step 11 with
    checkpoints at 4 and 8, resumed with --max-steps 12, lost its records of steps 9-11 for good."""
    from ngpt_ds import log
    from ngpt_ds.train.metrics import MetricsLogger

    log.setup()  # the trainer's logging (INFO on stdout): an earlier in-process command may have sent it elsewhere
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": step, "train/loss": 6.0 - step / 10}) + "\n" for step in range(1, 12)]
    lines.insert(8, json.dumps({"step": 8, "eval/loss": 6.5}) + "\n")  # an evaluation record of step 8
    path.write_text("".join(lines) + '{"step": 12, "train/lo')  # and a line cut short by the kill
    MetricsLogger(tmp_path, enabled=True, resume_step=8).close()
    assert path.read_text() == "".join(lines[:9])
    replaced = tmp_path / "metrics.replaced.jsonl"
    assert replaced.read_text() == "".join(lines[9:])  # steps 9-11, as they were
    assert capsys.readouterr().out == (
        f"metrics.jsonl: moved the 3 record(s) of steps 9-11, after the resumed step 8, to {replaced}: this run "
        "trains those steps again (TensorBoard shows the new ones)\n"
    )
    # A second resume further back appends; nothing is moved when nothing lies after the step.
    MetricsLogger(tmp_path, enabled=True, resume_step=7).close()
    MetricsLogger(tmp_path, enabled=True, resume_step=7).close()
    assert path.read_text() == "".join(lines[:7])
    assert replaced.read_text() == "".join(lines[9:] + lines[7:9])


def _records(steps) -> str:
    return "".join(json.dumps({"step": step, "train/loss": 6.0 - step / 10}) + "\n" for step in steps)


def test_resume_at_the_last_logged_step_keeps_metrics_jsonl_in_place(tmp_path):
    """Fault: every resume replaced metrics.jsonl by a copy, a new file even when it kept every line (a
    resume at the last logged step, the usual case after a stop): a `tail -f metrics.jsonl` watching the run
    went on reading the old, deleted file and never showed the resumed steps."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(_records(range(1, 6)))
    before = os.stat(path).st_ino
    assert truncate_jsonl(path, 5) == []
    assert (os.stat(path).st_ino, path.read_text()) == (before, _records(range(1, 6)))


def test_resume_that_drops_records_keeps_the_files_permissions(tmp_path):
    """Fault: the copy that replaces metrics.jsonl when a resume drops records got the umask's permissions:
    a run folder shared by a group (mode 0664) lost its group write bit at each resume."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(_records(range(1, 9)))
    path.chmod(0o664)
    old_umask = os.umask(0o022)
    try:
        assert truncate_jsonl(path, 5) == [6, 7, 8]
    finally:
        os.umask(old_umask)
    assert path.read_text() == _records(range(1, 6))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o664


def test_resume_of_a_hard_linked_copy_leaves_the_original_metrics_jsonl_alone(tmp_path):
    """A run folder copied with `cp -al` shares metrics.jsonl's inode with the original. A resume of the copy
    must give it a file of its own even when it keeps every line, or its appends would reach the original.
    The same for metrics.replaced.jsonl, which the resume appends the dropped records to (that one was
    appended through the shared inode before)."""
    path, original = tmp_path / "metrics.jsonl", tmp_path / "original.jsonl"
    path.write_text(_records(range(1, 6)))
    os.link(path, original)
    assert truncate_jsonl(path, 5) == []
    with open(path, "a") as f:  # the resumed run's next record
        f.write(_records([6]))
    assert original.read_text() == _records(range(1, 6))

    replaced, original_replaced = tmp_path / "metrics.replaced.jsonl", tmp_path / "original.replaced.jsonl"
    replaced.write_text(_records([9]))
    os.link(replaced, original_replaced)
    assert truncate_jsonl(path, 4) == [5, 6]
    assert replaced.read_text() == _records([9, 5, 6])
    assert original_replaced.read_text() == _records([9])


def test_resume_of_a_long_run_holds_one_line_of_metrics_jsonl_not_the_file(tmp_path):
    """Fault (week-long-run review, session 17): every resume held the kept lines of metrics.jsonl three times
    over on rank 0 (a list, its join, its encoding) while the other ranks waited: gigabytes for a long run
    logging every step. It is read and copied a line at a time now, whether it keeps every line or drops some,
    and with a torn last line (a crash mid-write), which is dropped."""
    path = tmp_path / "metrics.jsonl"
    record = {f"layer_{i}/alpha_attn": 0.05 for i in range(60)}  # a wide record, as a deep model logs
    with open(path, "w") as f:
        for step in range(1, 4001):
            f.write(json.dumps({"step": step, "train/loss": 3.0, **record}) + "\n")
        f.write('{"step": 4001, "tr')
    size = path.stat().st_size
    assert size > 6 * 2**20
    assert peak_python_bytes(lambda: truncate_jsonl(path, 4000)) < 2**20  # whole but for the torn line: rewritten
    assert path.stat().st_size == size - len('{"step": 4001, "tr')
    assert peak_python_bytes(lambda: truncate_jsonl(path, 4000)) < 2**20  # whole: left as it is
    assert peak_python_bytes(lambda: truncate_jsonl(path, 3000)) < 2**20  # 1000 records dropped
    lines = path.read_text().splitlines()
    assert len(lines) == 3000 and json.loads(lines[-1])["step"] == 3000
    moved = (tmp_path / "metrics.replaced.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in moved] == list(range(3001, 4001))
