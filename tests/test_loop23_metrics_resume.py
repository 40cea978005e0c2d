"""metrics.jsonl on resume: records whose step is no integer (a hand edit) are named, not dropped silently."""

import json

from ngpt_ds import log
from ngpt_ds.train.metrics import MetricsLogger


def test_resume_warns_once_naming_the_records_with_a_non_integer_step(tmp_path, capsys):
    """Fault: hand-edited metrics.jsonl lines with a non-integer step ("step": "12", 12.5, null) were dropped
    on resume without a word, and lost. The resume names the file, the count and the first line numbers in
    one warning, keeps the valid records in place and moves the others beside the file."""
    log.setup()  # the trainer's logging: an earlier in-process command may have sent it elsewhere
    path = tmp_path / "metrics.jsonl"
    good = [json.dumps({"step": step, "train/loss": 6.0 - step / 10}) + "\n" for step in range(1, 9)]
    bad = [json.dumps({"step": value, "train/loss": 1.0}) + "\n" for value in ("12", 12.5, None, "3", 4.0, "x", [2])]
    # lines 1-2 good, 3-4 bad, 5-6 good, 7-11 bad, 12-15 good
    lines = good[:2] + bad[:2] + good[2:4] + bad[2:] + good[4:]
    path.write_text("".join(lines))
    MetricsLogger(tmp_path, enabled=True, resume_step=6).close()
    assert path.read_text() == "".join(good[:6])
    replaced = tmp_path / "metrics.replaced.jsonl"
    assert replaced.read_text() == "".join(bad + good[6:])
    err = capsys.readouterr().err
    assert err == (
        f'warning: {path}: 7 record(s) without an integer "step" (line(s) 3, 4, 7, 8, 9 and 2 more) were dropped '
        f'on resume and moved to {replaced}: a record\'s "step" must be a whole number (12, not "12", 12.5 or '
        "null). The 6 record(s) up to step 6 are kept\n"
    )


def test_resume_with_only_integer_steps_says_nothing_about_steps(tmp_path, capsys):
    """A clean metrics.jsonl resumed at its last step: no warning, the file kept as it is."""
    log.setup()
    path = tmp_path / "metrics.jsonl"
    text = "".join(json.dumps({"step": step, "train/loss": 1.0}) + "\n" for step in range(1, 5))
    path.write_text(text)
    MetricsLogger(tmp_path, enabled=True, resume_step=4).close()
    assert path.read_text() == text
    assert capsys.readouterr().err == ""
    assert not (tmp_path / "metrics.replaced.jsonl").exists()
