"""tests/conftest.py read_metrics, polled while a trainer writes metrics.jsonl, reads whole records only.

The fault: read_metrics decoded every line of the file. A test that polls a running trainer (test_nccl27's wait for
step 7, test_launch_slurm's wait for a first loss) could read the file while a record was being written: the
trainer appends a record with one write, which the kernel copies into the file a page at a time, raising its size
after each page, so a reader between two pages gets the record's head; a resume's copy of the records it keeps
(ngpt_ds.train.metrics_jsonl) cuts lines too. That head is not JSON, and the poll failed with JSONDecodeError.
"""

import json

from conftest import read_metrics


def test_a_record_still_being_written_is_not_read(tmp_path):
    whole = json.dumps({"step": 1, "train/loss": 5.25}) + "\n"
    being_written = json.dumps({"step": 2, "train/loss": 5.0, "ngpt/max_norm_deviation": 1e-7})[:30]
    (tmp_path / "metrics.jsonl").write_text(whole + being_written)
    assert read_metrics(tmp_path) == [{"step": 1, "train/loss": 5.25}]
    # All but its newline: it may still be the head of a longer record (a page boundary falls anywhere).
    (tmp_path / "metrics.jsonl").write_text(whole + json.dumps({"step": 2, "train/loss": 5.0}))
    assert read_metrics(tmp_path) == [{"step": 1, "train/loss": 5.25}]


def test_every_whole_record_is_read(tmp_path):
    records = [{"step": 1, "train/loss": 5.25}, {"step": 2, "eval/loss": 5.5}, {"step": 2, "train/loss": 5.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert read_metrics(tmp_path) == [records[0], records[2]]
    assert read_metrics(tmp_path, "eval/loss") == [records[1]]
    (tmp_path / "metrics.jsonl").write_text("")
    assert read_metrics(tmp_path) == []
