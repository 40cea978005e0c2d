"""metrics.jsonl's resume warning counts the records of the prefix the last resume checked (metrics.checked.json).

The fault (review28a): a resume reads on from where the last one found records only, and counted only the lines
it read itself. A hand-edited record appended after a resume was named as line 1 of the file, and the warning said
"The 0 record(s) up to step 6 are kept", as if the run's history was gone, when all six were kept.
"""

import json

from ngpt_ds import log
from ngpt_ds.train.metrics import MetricsLogger
from ngpt_ds.train.metrics_jsonl import CHECKED_FILE


def test_a_resume_after_a_checked_prefix_counts_and_numbers_its_lines(tmp_path, capsys):
    log.setup()  # the trainer's logging: an earlier in-process command may have sent it elsewhere
    path = tmp_path / "metrics.jsonl"
    good = "".join(json.dumps({"step": step, "train/loss": 6.0 - step / 10}) + "\n" for step in range(1, 7))
    path.write_text(good)
    MetricsLogger(tmp_path, enabled=True, resume_step=6).close()  # marks the six records as checked
    mark = json.loads((tmp_path / CHECKED_FILE).read_text())
    assert (mark["bytes"], mark["max_step"], mark["records"]) == (len(good.encode()), 6, 6)
    capsys.readouterr()

    edited = json.dumps({"step": "7", "train/loss": 1.0}) + "\n"
    with path.open("a") as f:
        f.write(edited)
    MetricsLogger(tmp_path, enabled=True, resume_step=6).close()
    assert path.read_text() == good
    replaced = tmp_path / "metrics.replaced.jsonl"
    assert replaced.read_text() == edited
    assert capsys.readouterr().err == (
        f'warning: {path}: 1 record(s) without an integer "step" (line(s) 7) were dropped on resume and moved to '
        f'{replaced}: a record\'s "step" must be a whole number (12, not "12", 12.5 or null). The 6 record(s) up '
        "to step 6 are kept\n"
    )
    assert json.loads((tmp_path / CHECKED_FILE).read_text())["records"] == 6
