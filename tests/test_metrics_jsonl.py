"""metrics.jsonl on resume: the records after the resumed step go, and whatever a crash or a bad disk
left in the file is dropped instead of stopping the resume."""

import json

from ngpt_ds.train.metrics import truncate_jsonl


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
